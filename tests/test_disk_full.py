"""A full disk, on a small tmpfs the test mounts: while `generate` writes its NPZ, `train` its
checkpoint or bundle, `compare` its products, `make push` to a local remote and `make pull` into
the cache. Each fails with one line that names the path and says the disk is full, leaves no
partial file in place of an output and everything produced earlier (outputs, DVC's cache) as it
was; once space is freed the same command completes with the bytes of an undisturbed run (the
shared tiny run's)."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import (clone_run, error_lines, file_digests, project_env, push_again_then_pull_fresh, sh,
                      sharing, whole_objects)
from fly64study.resources import SKIP_ENV

pytestmark = pytest.mark.pipeline


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` mounted on ``path`` for the block (CI runs as root), holding what
    ``path`` held before."""
    kept = path.with_name(path.name + ".kept")
    if path.is_dir():
        path.rename(kept)
    path.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"mounting a tmpfs was refused ({proc.stderr.strip()}); the full-disk tests need root")
    try:
        if kept.is_dir():
            shutil.copytree(kept, path, symlinks=True, dirs_exist_ok=True)
            shutil.rmtree(kept)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(folder: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of ``folder``'s file system with one file (written: tmpfs does
    not count a sparse file)."""
    filler = folder / ".filler"
    left = shutil.disk_usage(folder).free - leave
    with open(filler, "wb") as fh:
        while left > 0:
            left -= fh.write(b"\0" * min(left, 1 << 20))
    return filler


def test_an_hdf5_file_and_an_npz_that_meet_a_full_disk_leave_nothing_but_one_clear_error(tmp_path):
    """HDF5 meeting a full disk mid-write crashed the process (SIGSEGV) while closing: it is built
    in memory and written like any other file."""
    import numpy as np

    from fly64study.contract import write_npz
    from fly64study.files import DiskFullError, atomic_h5

    with tmpfs(tmp_path / "small", "256k") as small:
        with pytest.raises(DiskFullError, match=rf"^{small}/a\.h5: disk full \(no space left on device, "):
            with atomic_h5(small / "a.h5") as h5:
                h5.create_dataset("x", data=np.zeros(100_000))
        with pytest.raises(DiskFullError, match=rf"^{small}/b\.npz: disk full"):
            write_npz(small / "b.npz", {"x": np.zeros(100_000)})
        assert list(small.iterdir()) == []


@pytest.fixture
def on_tmpfs(tiny_pipeline, tmp_path):
    """A copy of the shared tiny run whose data/ lies on a 96 MB tmpfs."""
    root = clone_run(tiny_pipeline, tmp_path / "study")
    with tmpfs(root / "data", "96m"):
        yield root


# (stage, its outputs (files or folders, as dvc.yaml names them), the path its failing write names
# (a pattern), bytes left free: less than the first large file it writes: train's checkpoint, 0.6 MB)
G = "data/phase_g/dose_1e3/dense/"
STAGES = {
    "generate": ("generate@1e3", ["data/phase_c/dose_1e3/patched_train.npz", "data/phase_c/dose_1e3/patched_test.npz",
                                  "data/phase_c/dose_1e3/overview.png"],
                 r"data/phase_c/dose_1e3/patched_train\.npz", 600_000),
    "train": ("train@1e3-dense", ["data/phase_e/dose_1e3/dense"] + [f"data/phase_e/runs/1e3-dense/{n}" for n in (
        "training_manifest.json", "skip_summary.json", "losses_1e3_dense.png", "eval_1e3_dense.json",
        "losses_1e3_dense.csv")], r"data/phase_e/(\.checkpoints/1e3-dense-gs2\.h5|dose_1e3/dense/gs2/wts\.h5\.zip)",
              60_000),
    "compare": ("compare@1e3-dense", [G + n for n in ("comparison_metrics.csv", "frc_curves.csv", "comparison.png",
                                                      "frc_curves.png", "products", "comparison.json", "metrics.json")],
                re.escape(G) + r"[\w/.]+", 200_000),
}


@pytest.mark.parametrize("phase", list(STAGES))
def test_a_stage_that_fills_the_disk_fails_clearly_and_its_rerun_gives_the_same_bytes(phase, on_tmpfs,
                                                                                      tiny_pipeline):
    root = on_tmpfs
    stage, outs, names, leave = STAGES[phase]
    for out in outs:  # the stage has to run: its outputs are not there (they are in DVC's cache)
        (shutil.rmtree if (root / out).is_dir() else os.unlink)(root / out)
    undisturbed = {o: v for o, v in file_digests(tiny_pipeline.root / "data").items()
                   if any(f"data/{o}" == x or f"data/{o}".startswith(x + "/") for x in outs)}
    assert len(undisturbed) >= len(outs)
    earlier, cache = file_digests(root / "data"), file_digests(root / ".dvc" / "cache")
    filler = fill(root / "data", leave)

    env = {**project_env(root), SKIP_ENV: "1"}  # past the early check: the disk fills mid-write
    # forced: otherwise DVC restores the outputs from its cache instead of running the stage
    proc = subprocess.run(["dvc", "repro", "-f", "-s", stage], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert re.match(rf"error: {names}: disk full \(no space left on device, [\d.]+ MiB free there\); nothing was "
                    "written in its place", lines[0]), lines
    assert "free space, then rerun the same command" in lines[0]
    assert not [p for p in (root / "data").rglob("*.tmp")], "a temporary file was left behind"
    after = file_digests(root / "data")
    written = {o: v for o, v in after.items() if o not in earlier}
    for rel, digest in written.items():  # an output written before the disk filled is whole
        assert digest == undisturbed[rel], f"{rel} is not whole"
    assert len(written) < len(undisturbed)  # ... and the one that did not fit is absent
    assert earlier.items() <= after.items()  # everything produced earlier is there, as it was
    assert file_digests(root / ".dvc" / "cache") == cache

    filler.unlink()
    sh(root, "dvc", "repro", "-f", "-s", stage)  # the same command, with space
    assert {o: v for o, v in file_digests(root / "data").items() if o in undisturbed} == undisturbed
    assert "up to date" in sh(root, "dvc", "status", stage).stdout


def test_generate_refuses_early_when_its_outputs_cannot_fit(on_tmpfs):
    root = on_tmpfs
    out = root / "data" / "phase_c" / "dose_1e3"
    shutil.rmtree(out)
    earlier = file_digests(root / "data")
    fill(root / "data", 1_000_000)
    proc = sh(root, "dvc", "repro", "-f", "-s", "generate@1e3", check=False)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("error: generate@1e3: needs about "), proc.stderr
    assert "of disk space (the outputs) in data/phase_c, but 1 MiB is free" in lines[0], lines[0]
    assert "make profile PROFILE=default" in lines[0]
    assert "diffraction @" not in proc.stderr and "positions on a" not in proc.stderr  # refused before simulating
    assert file_digests(root / "data") == earlier


def test_push_to_a_full_remote_fails_clearly_and_the_next_push_completes(tiny_pipeline, tmp_path):
    root = clone_run(tiny_pipeline, tmp_path / "study")
    cache = file_digests(root / ".dvc" / "cache")
    with tmpfs(tmp_path / "remote", "64m") as remote:
        sh(root, "dvc", "remote", "add", "--local", "small", str(remote))
        filler = fill(remote, 3_000_000)
        proc = sharing(root, "push", "--remote", "small")
        assert proc.returncode != 0
        lines = error_lines(proc)
        assert len(lines) == 1 and lines[0].startswith(f"error: `dvc push`: disk full at {remote} ("), proc.stderr
        assert "files were not uploaded" in lines[0] and ".dvc/tmp/push.log" in lines[0]
        sent = whole_objects(remote)  # what arrived is whole under its name; the rest is not there
        assert sent > 0
        assert file_digests(root / ".dvc" / "cache") == cache  # nothing here changed

        filler.unlink()
        clone = push_again_then_pull_fresh(root, "small", remote, sent, lambda c: sh(
            c, "dvc", "remote", "add", "--local", "small", str(remote)), tmp_path / "clone")
    assert file_digests(clone / "data") == file_digests(tiny_pipeline.root / "data")


def test_pull_into_a_full_cache_fails_clearly_and_the_next_pull_completes(tiny_pipeline, tmp_path):
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(tiny_pipeline.root), str(clone))
    sh(clone, "dvc", "remote", "add", "--local", "team", str(tiny_pipeline.remote))
    undisturbed = file_digests(tiny_pipeline.root / "data")
    with tmpfs(clone / ".dvc" / "cache", "64m") as cache:
        filler = fill(cache, 4_000_000)
        proc = sharing(clone, "pull", "--remote", "team")
        assert proc.returncode != 0
        lines = error_lines(proc)
        assert len(lines) == 1 and lines[0].startswith(f"error: `dvc pull`: disk full at {cache} ("), proc.stderr
        assert "files were not downloaded" in lines[0]
        assert whole_objects(cache) > 0
        assert (clone / ".dvc" / "tmp" / "pull-unverified-since").is_file()  # the next pull checks what came now
        for rel, digest in file_digests(clone / "data").items():  # what was checked out is whole
            assert digest == undisturbed[rel], rel

        filler.unlink()
        proc = sharing(clone, "pull", "--remote", "team")
        assert proc.returncode == 0 and "every object pulled matches" in proc.stdout, proc.stderr
        assert not (clone / ".dvc" / "tmp" / "pull-unverified-since").exists()
        assert file_digests(clone / "data") == undisturbed


def test_pull_into_a_full_workspace_names_the_file_it_could_not_put_in_place(tiny_pipeline, tmp_path):
    """The cache has room, the workspace not: DVC says only 'Checkout failed for following targets
    ... Is your cache up to date?'; `make pull` says which files and that the disk is full, and the
    next pull completes."""
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(tiny_pipeline.root), str(clone))
    sh(clone, "dvc", "remote", "add", "--local", "team", str(tiny_pipeline.remote))
    git_kept = file_digests(clone / "data")  # the metrics tables git holds
    with tmpfs(clone / "data", "64m") as data:
        filler = fill(data, 1_000_000)
        proc = sharing(clone, "pull", "--remote", "team")
        assert proc.returncode != 0
        lines = error_lines(proc)
        assert len(lines) == 1 and re.match(r"error: `dvc pull`: could not check out data/\S+( and \d+ more)? \([\d.]+ "
                                            r"MiB free there: the disk is full\); free space, then run the same command "
                                            r"again", lines[0]), proc.stderr
        assert git_kept.items() <= file_digests(data).items()
        assert not list(data.rglob("*.tmp")), "DVC's partial copies were left beside the outputs"
        undisturbed = file_digests(tiny_pipeline.root / "data")
        for rel, digest in file_digests(data).items():  # what was checked out is whole
            assert digest == undisturbed[rel], rel
        filler.unlink()
        proc = sharing(clone, "pull", "--remote", "team")
        assert proc.returncode == 0, proc.stderr
        assert file_digests(data) == undisturbed
