"""Too little memory: a stage whose estimated peak (from params) exceeds what the machine lets it
use refuses before it computes anything, naming the estimate, what is available and a smaller
profile. The limit is a real one: a memory cgroup (as a batch scheduler or a container sets),
created by the test (CI runs as root)."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, profile_params
from fly64study import resources
from fly64study.design import load_params

GiB = 1 << 30


@contextlib.contextmanager
def memory_cgroup(limit: int):
    """A memory cgroup (v2 or v1) limited to ``limit`` bytes; yields the command prefix that runs a
    command inside it."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").is_file()
    group = (Path("/sys/fs/cgroup") if v2 else Path("/sys/fs/cgroup/memory")) / f"fly64study-test-{os.getpid()}"
    try:
        group.mkdir()
        (group / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(limit))
    except OSError as err:
        with contextlib.suppress(OSError):
            group.rmdir()
        pytest.skip(f"cannot make a memory cgroup here ({err}); the test needs root and a writable cgroup tree")
    try:
        yield ["sh", "-c", f'echo $$ > {group / "cgroup.procs"} && exec "$@"', "sh"]
    finally:
        group.rmdir()


@pytest.mark.parametrize("stage", ["generate", "overlap"])
def test_a_stage_that_would_not_fit_in_memory_refuses_before_it_starts(stage, tmp_path):
    params = profile_params("full")
    phase_c = tmp_path / "c"  # the full profile's splits as overlap sees them before it reads them: their sizes
    phase_c.mkdir()
    for part, size in (("train", 990_000_000), ("test", 1_000_000_000)):  # measured (bench/LOG.md)
        with open(phase_c / f"patched_{part}.npz", "wb") as fh:
            fh.truncate(size)  # sparse: the size without the bytes
    need = (resources.generate(load_params(params)) if stage == "generate" else resources.overlap(phase_c)).memory
    cmd = {"generate": ["stages/generate.py", "--dose", "1e3"],
           "overlap": ["stages/overlap.py", "--view", "dense", "--phase-c", str(phase_c)]}[stage]
    out = tmp_path / "out"
    with memory_cgroup(need // 2) as inside:
        proc = subprocess.run([*inside, sys.executable, *cmd, "--params", str(params), "--out", str(out)], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    basis = "params" if stage == "generate" else "the size of its input files"
    m = re.search(rf"needs about ([\d.]+) GiB of memory at its peak \(estimated from {basis}\), but ([\d.]+) GiB is "
                  r"available; switch to a smaller profile \(`make profile PROFILE=default`", lines[0])
    assert m, lines[0]
    assert float(m.group(1)) == pytest.approx(need / GiB, abs=0.05)
    assert float(m.group(2)) <= need / 2 / GiB + 0.05  # the cgroup's limit, not the machine's memory
    assert not out.exists() or not any(out.iterdir())  # nothing computed, nothing written


def test_the_estimates_follow_the_profiles_sizes():
    """generate's estimate, the full profile (10,000 positions of 128 x 128) against the default
    (1,600 of 64 x 64): the data term grows 25-fold; bench/memory.py compares both with measured
    peaks."""
    default, full = (load_params(profile_params(name)) for name in ("default", "full"))
    d, f = resources.generate(default), resources.generate(full)
    assert f.memory > d.memory and f.disk > 20 * d.disk
    assert 4 * GiB < f.memory < 5 * GiB  # measured 4.28 GiB (bench/LOG.md)
    assert 1.8 * GiB < f.disk < 2.0 * GiB  # the two splits are 1.99 GB on disk
