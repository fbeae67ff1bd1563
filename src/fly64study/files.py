"""Atomic, timestamp-free file writing shared by every stage.

A killed run must never leave a half-written output under its final name, so everything is
written to a temporary file in the same directory and renamed into place (``os.replace`` is
atomic on POSIX when source and target share a file system).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from fly64study import numerics

# Zip entries carry this date so that equal content gives equal bytes (the zip epoch).
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as sorted, indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_metrics(path: str | os.PathLike, obj: dict) -> None:
    """A DVC metrics file (``dvc metrics show/diff``): nested mappings of numbers only, a ``None``
    (no value, e.g. the spacing of a view that keeps every position) left out. Text and flags
    belong in the stage's other outputs; in a metrics file they become columns nobody compares."""
    def numbers(node: Any, where: str) -> Any:
        if isinstance(node, dict):
            return {key: numbers(value, f"{where}.{key}" if where else str(key))
                    for key, value in node.items() if value is not None}
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            raise TypeError(f"{path}: {where}: {node!r} is not a number; keep it out of the metrics file")
        return node

    write_json(path, numbers(obj, ""))


def write_timing(path: str | os.PathLike, record: dict) -> None:
    """An untracked run record (wall times, the host): kept out of DVC-tracked outputs, so that
    ``dvc.lock`` changes only when results do. Lives under ``data/timing/`` (git-ignored)."""
    write_json(path, {**record, "host": numerics.host()})


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA256 of a file, streamed (DVC's own hashes are MD5)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` so that ``dst`` is either the old file or the whole new one."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
