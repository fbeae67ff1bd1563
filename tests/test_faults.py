"""Killed mid-write: SIGKILL a `generate` and a `train` stage at several points. No output is ever
left half-written (every write is a temp file + rename), the next `dvc repro` completes (a killed
training job resumes from its per-epoch checkpoint), and the results are byte-identical to an
uninterrupted run."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import copy_project, project_env, sh
from fly64study.files import sha256_file

pytestmark = pytest.mark.pipeline

GENERATE = ["data/phase_c/dose_1e3/patched_train.npz", "data/phase_c/dose_1e3/patched_test.npz",
            "data/phase_c/dose_1e3/overview.png"]
BUNDLE = "data/phase_e/dose_1e3/dense/gs2/wts.h5.zip"
TRAIN = [BUNDLE, "data/phase_e/runs/1e3-dense/training_manifest.json",
         "data/phase_e/runs/1e3-dense/skip_summary.json"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, str], float]:
    """A tiny project after an uninterrupted `dvc repro train@1e3-dense`: (root, output digests,
    the train stage's wall time)."""
    root = copy_project(tmp_path_factory.mktemp("faults") / "study")
    # four epochs without early stopping, so a kill can fall between epochs
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("epochs: 2 ", "epochs: 4 ").replace("patience: 2 ", "patience: 4 "))
    sh(root, "dvc", "repro", "generate@1e3", "overlap@1e3-dense")
    t0 = time.perf_counter()
    sh(root, "dvc", "repro", "train@1e3-dense")
    seconds = time.perf_counter() - t0
    return root, {p: sha256_file(root / p) for p in GENERATE + TRAIN}, seconds


def kill_during(root: Path, stage: str, delay: float, after=lambda: True, log: Path | None = None) -> bool:
    """Start a forced rerun of one stage and SIGKILL its whole process group ``delay`` s after
    ``after()`` first holds (polled; at once by default); its output goes to ``log``. Returns
    whether it was still running (so the kill landed mid-stage)."""
    drop_corrupt_rwlock(root)
    with open(log or os.devnull, "w") as out:
        proc = subprocess.Popen(["dvc", "repro", "-f", "-s", stage], cwd=root, env=project_env(root),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    while not after() and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(delay)
    running = proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had already finished, children and all
        pass
    proc.wait()
    return running


def drop_corrupt_rwlock(root: Path) -> None:
    lock = root / ".dvc" / "tmp" / "rwlock"
    try:
        json.loads(lock.read_text())
    except FileNotFoundError:
        pass
    except ValueError:
        lock.unlink()


def repro_after_kill(root: Path, *args: str):
    """`dvc repro` after a kill. DVC writes its .dvc/tmp/rwlock in place, so a kill can leave it
    corrupt; DVC then stops and says to delete it (its own state, not the study's outputs)."""
    proc = sh(root, "dvc", "repro", *args, check=False)
    if proc.returncode and "Unable to read RWLock-file" in proc.stderr:
        (root / ".dvc" / "tmp" / "rwlock").unlink()
        proc = sh(root, "dvc", "repro", *args)
    assert proc.returncode == 0, proc.stderr
    return proc


def assert_whole_or_absent(root: Path, digests: dict[str, str], paths: list[str]) -> None:
    """Each output is absent or complete: byte-identical where the content is deterministic, a
    whole JSON document where it records the run (timestamps, timings)."""
    for p in paths:
        if (root / p).exists():
            if p.endswith(".json"):
                json.loads((root / p).read_text())
            else:
                assert sha256_file(root / p) == digests[p], f"{p} is half-written or differs"


def test_killed_generate_leaves_no_partial_file_and_repro_restores_identical_outputs(reference):
    root, digests, _ = reference
    landed = 0
    for delay in (0.8, 1.6, 2.4, 3.2):
        landed += kill_during(root, "generate@1e3", delay)
        assert_whole_or_absent(root, digests, GENERATE)
    assert landed >= 2, "the stage ended before most kills: raise the delays' range"
    repro_after_kill(root, "train@1e3-dense")
    for p in GENERATE + [BUNDLE]:
        assert sha256_file(root / p) == digests[p], p
    assert "up to date" in sh(root, "dvc", "status", "train@1e3-dense").stdout


def test_killed_training_resumes_and_ends_with_the_same_bundle(reference, tmp_path):
    """Killed as it starts, just after two epochs' checkpoints, then while a resumed run writes
    its bundle (kills on polled events, so they land mid-stage however loaded the machine is): no
    output is ever half-written, each later run resumes from the checkpoint the kill before it
    left, and the bundle a resumed run writes is the reference's, byte for byte."""
    root, digests, seconds = reference
    stage = "train@1e3-dense"
    checkpoint = root / "data/phase_e/.checkpoints/1e3-dense-gs2.h5"
    bundle_tmp = str((root / BUNDLE).parent / ".wts.h5.zip.*.tmp")

    def saved() -> int | None:
        try:
            return checkpoint.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    landed = kill_during(root, stage, 0.3 * seconds)  # most likely still starting
    assert_whole_or_absent(root, digests, TRAIN)
    checkpoint.unlink(missing_ok=True)  # that kill is the start's: four checkpoints are to come
    logs = [tmp_path / f"run{i}.log" for i in range(3)]
    for delay, log in zip((0.0, 0.05), logs):
        landed += kill_during(root, stage, delay, after=lambda seen=saved(): saved() not in (None, seen), log=log)
        assert_whole_or_absent(root, digests, TRAIN)
    assert landed >= 2 and checkpoint.exists(), "a kill after epoch 1 or 2 leaves its checkpoint"
    # the next run resumes; killed as its bundle's temporary file appears (if the poll catches it)
    landed += kill_during(root, stage, 0.0, after=lambda: bool(glob.glob(bundle_tmp)), log=logs[2])
    assert_whole_or_absent(root, digests, TRAIN)
    for i, log in enumerate(logs[1:], start=1):  # epoch i's checkpoint, left by the kill before
        assert f"resuming after epoch {i} " in log.read_text(), log.read_text()
    if checkpoint.exists():  # the kill came before the job ended: a forced rerun resumes it
        proc = repro_after_kill(root, "-f", "-s", stage)
        assert "resuming after epoch 4 " in proc.stdout + proc.stderr
    assert sha256_file(root / BUNDLE) == digests[BUNDLE]  # a resumed run's bundle, either way
    assert not checkpoint.exists(), "a finished job keeps no checkpoint"
    repro_after_kill(root, stage)  # DVC records it (a kill may have come after the bundle, before the lock)
    assert "up to date" in sh(root, "dvc", "status", stage).stdout
