"""PtychoPINN+LSQML: LSQML started from a trained network's stitched field, on the test split's counts."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from fly64study.bundle import write_bundle
from fly64study.contract import ContractError
from fly64study.hybrid import run_hybrid
from fly64study.inference import trained_bundles
from fly64study.iterative import Choice, load_result, lsqml
from fly64study.simulate import generate_dose
from fly64study.train import Job, train_model
from fly64study.tuning import score

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits(tiny):
    return generate_dose(tiny.design, tiny.generate, "1e5")  # (train, test), N = 32


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_lsqml_starts_from_the_given_object(tiny, splits, one_thread):
    """A flat start given explicitly is the default run, byte for byte (the margin stays flat); the
    truth as the start scores far above a flat start after the same two epochs; a start off the
    object's grid or with NaN pixels is refused, naming the problem."""
    test = splits[1]
    cfg = dataclasses.replace(tiny.reconstruct, epochs=2)
    flat = lsqml(test, cfg)
    assert lsqml(test, cfg, start=np.ones_like(test.objectGuess)).object.tobytes() == flat.object.tobytes()
    assert flat.settings["object_init"] == "flat (1 + 0j)"
    truth = lsqml(test, cfg, start=test.objectGuess, start_note="the truth")
    assert truth.settings["object_init"] == "the truth"
    assert score(truth.object, test, 3.0) > 0.95 > score(flat.object, test, 3.0) + 0.1
    with pytest.raises(ContractError, match=r"initial object: shape \(3, 3\), expected the object's"):
        lsqml(test, cfg, start=np.ones((3, 3), np.complex64))
    broken = test.objectGuess.copy()
    broken[5, 5] = np.nan
    with pytest.raises(ContractError, match="initial object: has non-finite pixels"):
        lsqml(test, cfg, start=broken)


def test_the_hybrid_starts_from_each_bundle_and_never_reads_the_truth(tiny, splits, tmp_path, one_thread):
    """run_hybrid on a test split whose truth (objectGuess, Y) is noise writes the same bytes: the
    truth gives only the grid. Its object is not flat LSQML's of the same epochs (the network's field
    was the start), and its manifest entry and run record name the seed, the bundle and the file."""
    train, test = splits
    net = train_model(train, gridsize=2, cfg=dataclasses.replace(tiny.train, epochs=1), seed=7, neighbor_count=7,
                      grouping_seed=123, device=CPU)
    job = Job(dose="1e5", view="dense", gridsize=2)
    root = tmp_path / "phase_e"
    sha = write_bundle(root / job.relative_dir() / "wts.h5.zip", net.model, dose=1e5, dose_label="1e5",
                       extra={"view": "dense"})
    (root / "runs" / "1e5-dense").mkdir(parents=True)
    (root / "runs" / "1e5-dense" / "training_manifest.json").write_text(json.dumps({"jobs": [{
        "dose": "1e5", "view": "dense", "gridsize": 2, "seed": 7, "bundle_path": str(job.relative_dir() / "wts.h5.zip"),
        "sha256": sha, "epochs": 1, "best_epoch": 1, "final_val_loss": 0.0, "settings": {}}]}))
    bundles = trained_bundles(root / "runs", root, "1e5", "dense", 2)
    params = dataclasses.replace(tiny, hybrid=dataclasses.replace(tiny.hybrid, epochs=2))
    rng = np.random.default_rng(0)
    poisoned = dataclasses.replace(
        test, objectGuess=np.exp(1j * rng.uniform(-3, 3, test.objectGuess.shape)).astype(np.complex64),
        Y=np.exp(1j * rng.uniform(-3, 3, test.Y.shape)).astype(np.complex64))
    runs = {}
    for name, split in (("true", test), ("poisoned", poisoned)):
        (entry,) = run_hybrid(split, bundles, params, Choice(), out_dir=tmp_path / name, dose="1e5", view="dense",
                              test_path="test.npz", timing_dir=tmp_path / f"timing_{name}")
        runs[name] = entry
    entry = runs["true"]
    assert entry["sha256"] == runs["poisoned"]["sha256"] and entry["status"] == "completed"
    assert (entry["seed"], entry["bundle_sha256"], entry["epochs_run"]) == (7, sha, 2)
    assert entry["settings"]["object_init"] == f"PtychoPINN seed 7 (bundle {sha[:12]})"
    started = load_result(tmp_path / "true" / "seed_7" / "ptychi_reconstruction.npz")
    flat = lsqml(test, params.reconstruct, choice=Choice(epochs=2))
    assert started.object.shape == flat.object.shape and not np.array_equal(started.object, flat.object)
    record = json.loads((tmp_path / "timing_true" / "seed_7.json").read_text())
    assert record["sha256"] == entry["sha256"] and record["pinn_seconds"] > 0 and record["wall_seconds"] > 0
