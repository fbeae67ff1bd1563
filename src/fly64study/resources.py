"""What a stage will need, estimated from params before it starts: memory and disk space.

A stage that cannot fit should say so in its first second, not an hour later by the kernel's
out-of-memory killer or a full disk. The array sizes of phases C and D follow from params (n
positions of N x N patterns), so their peaks do too: each estimate below is the stage's live
arrays at its peak, read off the code, plus the process as measured before them. `bench/memory.py`
compares the estimates with `/usr/bin/time -v` (results in bench/LOG.md).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from fly64study.design import Params
from fly64study.files import existing_folder

GiB = 1 << 30
# Resident size of a stage process before its arrays, measured (`/usr/bin/time -v`, see bench/memory.py):
# with torch and matplotlib imported (generate), and with numpy only (overlap).
TORCH_PROCESS = 760 << 20
NUMPY_PROCESS = 70 << 20
# Per pattern of N x N pixels: the study keeps diffraction as float32 and the truth patches Y as
# complex64, so one position of a dataset costs 12 bytes per pixel.
DATASET = 4 + 8

SKIP_ENV = "FLY64STUDY_SKIP_RESOURCE_CHECK"
SMALLER = "switch to a smaller profile (`make profile PROFILE=default`, or tiny) or lower generate.n_positions / design.N"


class ResourceError(RuntimeError):
    """The machine has too little memory or disk space for a stage: said before it starts."""


@dataclass(frozen=True)
class Need:
    memory: int  # bytes, the estimated peak resident size
    disk: int  # bytes the stage writes


def _data(params: Params) -> int:
    """Bytes of one dose's n positions: diffraction, truth patches, and the object saved with each split."""
    n, P, M = params.generate.n_positions, params.design.N ** 2, params.generate.object_size
    return n * P * DATASET + 2 * M * M * 8


def generate(params: Params) -> Need:
    """Phase C: all n patches and their diffraction, then the train and test splits copied out of
    them (:func:`fly64study.simulate.split_on_axis`): twice the data at the peak. Writes the data
    once, as two uncompressed NPZ files, and an overview plot."""
    data = _data(params)
    return Need(memory=TORCH_PROCESS + 2 * data, disk=data + (2 << 20))


def overlap(params: Params) -> Need:
    """Phase D, one view: the train split and its view stay alive while the test split is read
    (a view with every position is the split itself, a Poisson-disc view a copy of a fraction of
    it): the data and a quarter more. Writes at most the two splits again."""
    data = _data(params)
    return Need(memory=NUMPY_PROCESS + data + data // 4, disk=data + (1 << 20))


def available_memory() -> int:
    """What this process may hold at its peak: what it holds now (the estimates count it) and the
    kernel's MemAvailable, lowered by a cgroup memory limit (a batch scheduler's or a container's,
    v1 or v2) where one is set."""
    avail = _meminfo("MemAvailable")
    for limit, usage in _cgroup_limits():
        avail = min(avail, max(limit - usage, 0))
    return avail + _meminfo("RssAnon", "/proc/self/status")  # its own heap (library pages are reclaimable)


def _meminfo(key: str, path: str = "/proc/meminfo") -> int:
    with open(path) as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{path} has no {key}")


def _cgroup_limits() -> list[tuple[int, int]]:
    """(limit, usage) of this process's memory cgroup, if it has a limit."""
    found = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            names, root = ("memory.max", "memory.current"), Path("/sys/fs/cgroup")
        elif "memory" in controllers.split(","):  # v1
            names, root = ("memory.limit_in_bytes", "memory.usage_in_bytes"), Path("/sys/fs/cgroup/memory")
        else:
            continue
        # the path is relative to the namespace's root; a container often mounts only its own
        for folder in (root / path.lstrip("/"), root):
            try:
                limit = (folder / names[0]).read_text().strip()
                usage = int((folder / names[1]).read_text())
            except (OSError, ValueError):
                continue
            if limit != "max" and int(limit) < 1 << 60:
                found.append((int(limit), usage))
            break
    return found


def check(stage: str, need: Need, out: str | os.PathLike) -> None:
    """Refuse, before anything is computed, a stage whose estimated memory or disk space the
    machine lacks. Disk space is that of ``out``'s file system, twice over when DVC's cache shares
    it (DVC copies each output into the cache after the stage). ``FLY64STUDY_SKIP_RESOURCE_CHECK=1``
    skips the check, for a machine where the estimate is wrong (a full disk is still reported)."""
    if os.environ.get(SKIP_ENV) == "1":
        return
    avail = available_memory()
    if need.memory > avail:
        raise ResourceError(f"{stage}: needs about {_size(need.memory)} of memory at its peak (estimated from params), "
                            f"but {_size(avail)} is available; {SMALLER}")
    folder = existing_folder(out)
    disk = need.disk
    cache = Path(".dvc/cache")
    if cache.is_dir() and cache.stat().st_dev == folder.stat().st_dev:
        disk *= 2
    free = shutil.disk_usage(folder).free
    if disk > free:
        shared = " (the outputs and DVC's cache copy of them)" if disk > need.disk else ""
        raise ResourceError(f"{stage}: needs about {_size(disk)} of disk space{shared} in {folder}, but "
                            f"{_size(free)} is free; free space there, or {SMALLER}")


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / (1 << 20):.0f} MiB"
