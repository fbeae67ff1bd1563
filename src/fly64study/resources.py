"""What a stage will need, estimated before it starts: memory and disk space.

A stage that cannot fit should say so in its first second, not an hour later by the kernel's
out-of-memory killer or a full disk. The array sizes of phase C follow from params (n positions of
N x N patterns), those of phase D from the size of phase C's files, so their peaks do too: each
estimate below is the stage's live arrays at its peak, read off the code, plus the process as
measured before them. `bench/memory.py`
compares the estimates with `/usr/bin/time -v` (results in bench/LOG.md).
"""
from __future__ import annotations

import configparser
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fly64study.cli import ResourceError
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


@dataclass(frozen=True)
class Need:
    memory: int  # bytes, the estimated peak resident size
    disk: int  # bytes the stage writes
    basis: str = "params"  # what the estimate comes from


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


def overlap(phase_c: str | os.PathLike) -> Need:
    """Phase D, one view, from the size of the splits it reads (uncompressed NPZ files: their
    arrays' size): the train split and its view stay alive while the test split is read (a view
    with every position is the split itself, a Poisson-disc view a copy of a fraction of it): the
    data and a quarter more. Writes at most the two splits again."""
    data = sum(p.stat().st_size for p in (Path(phase_c) / f"patched_{part}.npz" for part in ("train", "test"))
               if p.is_file())
    return Need(memory=NUMPY_PROCESS + data + data // 4, disk=data + (1 << 20), basis="the size of its input files")


def available_memory(cgroups: Path = Path("/sys/fs/cgroup")) -> int:
    """What this process may hold at its peak: what it holds now (the estimates count it) and the
    kernel's MemAvailable, lowered by the memory limits of its cgroup and the cgroups above it (a
    batch scheduler's or a container's, v1 or v2), less what they hold that cannot be reclaimed
    (their usage counts the page cache, which gives way)."""
    avail = _field(Path("/proc/meminfo"), "MemAvailable") * 1024
    for limit, held in _cgroup_limits(cgroups):
        avail = min(avail, max(limit - held, 0))
    try:
        own = _field(Path("/proc/self/status"), "RssAnon")  # its own heap (library pages give way)
    except KeyError:  # a kernel before 4.5
        own = 0
    return avail + own * 1024


def _field(path: Path, key: str, sep: str = ":") -> int:
    """The number after ``key`` in a ``key: value`` (or ``key value``) file."""
    for line in path.read_text().splitlines():
        name, _, value = line.partition(sep)
        if name.strip() == key:
            return int(value.split()[0])
    raise KeyError(f"{path} has no {key}")


# per cgroup version: the limit, the usage and the page cache in memory.stat that gives way
_CGROUP_FILES = {2: ("memory.max", "memory.current", "inactive_file"),
                 1: ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")}


def _cgroup_limits(cgroups: Path) -> list[tuple[int, int]]:
    """(limit, unreclaimable usage) of each memory cgroup, this process's and those above it, that
    has a limit: a limit on a parent holds the usage of every group under it."""
    found = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            version, root = 2, cgroups
        elif "memory" in controllers.split(","):
            version, root = 1, cgroups / "memory"
        else:
            continue
        limit_file, usage_file, cache_key = _CGROUP_FILES[version]
        folder = _mounted(root, path)
        while True:
            try:
                limit = (folder / limit_file).read_text().strip()
                if limit != "max" and int(limit) < 1 << 60:
                    usage = int((folder / usage_file).read_text())
                    found.append((int(limit), usage - _field(folder / "memory.stat", cache_key, " ")))
            except (OSError, KeyError, ValueError):
                pass  # no limit readable here: MemAvailable and the other levels stand
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
    return found


def _mounted(root: Path, path: str) -> Path:
    """A cgroup's folder: its path is relative to the namespace's root, and a container often
    mounts only its own cgroup at ``root``."""
    folder = root / path.lstrip("/")
    return folder if folder.is_dir() else root


def _dvc_cache_copy() -> Path | None:
    """DVC's cache folder of the repository in the working directory, where DVC copies each output
    after the stage (`cache.type` with a copy); None where it only links, or outside a repository."""
    if not Path(".dvc").is_dir():
        return None
    config = configparser.ConfigParser(strict=False, interpolation=None)
    config.read([".dvc/config", ".dvc/config.local"])
    folder = Path(config.get("cache", "dir", fallback="cache"))
    folder = folder if folder.is_absolute() else Path(".dvc") / folder
    links = {t.strip() for t in config.get("cache", "type", fallback="reflink,copy").split(",")}
    # a reflink falls back to a copy on most file systems
    return folder if "copy" in links or "reflink" in links else None


def check(stage: str, need: Need, out: str | os.PathLike) -> None:
    """Refuse, before anything is computed, a stage whose estimated memory or disk space the
    machine lacks. Disk space: the outputs on ``out``'s file system, and DVC's copy of them on its
    cache's (the same one, most often). ``FLY64STUDY_SKIP_RESOURCE_CHECK=1`` skips the check, for a
    machine where the estimate is wrong (a full disk is still reported, by the write that fails)."""
    if os.environ.get(SKIP_ENV) == "1":
        return
    avail = available_memory()
    if need.memory > avail:
        raise ResourceError(f"{stage}: needs about {_size(need.memory)} of memory at its peak (estimated from "
                            f"{need.basis}), but {_size(avail)} is available; {SMALLER}")
    places = {existing_folder(out): "the outputs"}
    cache = _dvc_cache_copy()
    if cache is not None:
        places[existing_folder(cache)] = "DVC's cache copy of them"
    needs = Counter()
    for folder in places:
        needs[folder.stat().st_dev] += need.disk
    for folder, what in places.items():
        disk, free = needs[folder.stat().st_dev], shutil.disk_usage(folder).free
        if disk > free:
            shared = " (the outputs and DVC's cache copy of them)" if disk > need.disk else f" ({what})"
            raise ResourceError(f"{stage}: needs about {_size(disk)} of disk space{shared} in {folder}, but "
                                f"{_size(free)} is free; free space there, or {SMALLER}")


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / (1 << 20):.0f} MiB"
