"""Atomic, timestamp-free file writing shared by every stage.

A killed run must never leave a half-written output under its final name, so everything is
written to a temporary file in the same directory and renamed into place (``os.replace`` is
atomic on POSIX when source and target share a file system).
"""
from __future__ import annotations

import contextlib
import errno
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


class DiskFullError(OSError):
    """An output did not fit on its file system: the temporary file is gone, the output untouched."""

    def __init__(self, path: Path):
        free = shutil.disk_usage(existing_folder(path.parent)).free
        super().__init__(errno.ENOSPC, f"{path}: disk full (no space left on device, {free / 2**20:.1f} MiB free "
                                       "there); nothing was written in its place: free space, then rerun the same "
                                       "command", str(path))

    def __str__(self) -> str:
        return self.strerror


def existing_folder(folder: str | os.PathLike) -> Path:
    """``folder``, or its nearest ancestor that exists (whose file system a write there would use)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC, or a quota's EDQUOT (h5py and zipfile raise them as OSError with that errno)."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.
    A full disk raises :class:`DiskFullError` naming ``path``, with the temporary file removed."""
    target = Path(path)
    tmp_path = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, target)
    except OSError as err:
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise DiskFullError(target) from err
        raise
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, **kwargs: Any) -> Iterator[Any]:
    """An HDF5 file (``h5py.File`` options in ``kwargs``) built in memory, then written to ``path``
    atomically. HDF5 that meets a full disk mid-write fails again while closing and can crash the
    process (a SIGSEGV, seen with a checkpoint), so here it never writes to disk itself; the bytes
    are those it writes to a file."""
    import h5py

    h5 = h5py.File(f"{path}.image", "w", driver="core", backing_store=False, **kwargs)
    try:
        yield h5
        h5.flush()
        image = h5.id.get_file_image()
    finally:
        h5.close()
    with atomic_path(path) as tmp:
        tmp.write_bytes(image)


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
    return _digest(hashlib.sha256(), path, chunk)


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """MD5 of a file, streamed: the hash DVC records for it in dvc.lock and .dvc files."""
    return _digest(hashlib.md5(), path, chunk)


def _digest(digest, path: str | os.PathLike, chunk: int) -> str:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` so that ``dst`` is either the old file or the whole new one."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
