"""<network>+LSQML: LSQML started from a trained network's stitched field, on the test split's counts."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from fly64study import metrics
from fly64study.bundle import write_bundle
from fly64study.contract import ContractError
from fly64study.files import write_json
from fly64study.hybrid import MANIFEST, START, field_digest, load_runs, run_hybrid, start_fields
from fly64study.inference import trained_bundles
from fly64study.iterative import Choice, lsqml
from fly64study.simulate import generate_dose
from fly64study.train import Job, train_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits(tiny):
    return generate_dose(tiny.design, tiny.generate, "1e5")  # (train, test), N = 32


def _fixed_frame(field: np.ndarray, split) -> float:
    """Phase MS-SSIM with no registration: a start put in the wrong place would show here."""
    region = metrics.scanned_area(split.xcoords, split.ycoords, split.objectGuess.shape)
    al = metrics.align(field, split.objectGuess, region, level="fixed-frame")
    return float(metrics.ms_ssim(al.phase, al.truth_phase))


def test_lsqml_starts_from_the_given_object(tiny, splits, one_thread):
    """A flat start given explicitly is the default run, byte for byte (the margin stays flat); the
    truth as the start stays far above a flat start after the same two epochs, in the fixed frame (so
    it was put where it belongs); a start off the object's grid is refused, and one with NaN pixels
    is a failed run with the reason, as a pty-chi failure is."""
    test = splits[1]
    cfg = dataclasses.replace(tiny.reconstruct, epochs=2)
    flat = lsqml(test, cfg)
    assert lsqml(test, cfg, start=np.ones_like(test.objectGuess)).object.tobytes() == flat.object.tobytes()
    assert flat.settings["object_init"] == "flat (1 + 0j)"
    truth = lsqml(test, cfg, start=test.objectGuess, start_note="the truth")
    assert truth.settings["object_init"] == "the truth"
    assert _fixed_frame(truth.object, test) > 0.95 > _fixed_frame(flat.object, test) + 0.1
    with pytest.raises(ContractError, match=r"initial object: shape \(3, 3\), expected the object's"):
        lsqml(test, cfg, start=np.ones((3, 3), np.complex64))
    broken = test.objectGuess.copy()
    broken[5, 5] = np.nan
    failed = lsqml(test, cfg, start=broken)
    assert failed.status == "failed" and "non-finite" in failed.error and failed.object.size == 0


@pytest.fixture(scope="module")
def bundles(tiny, splits, tmp_path_factory):
    """One gridsize-2 network of the tiny profile, trained one epoch, as phase E files it."""
    net = train_model(splits[0], gridsize=2, cfg=dataclasses.replace(tiny.train, epochs=1), seed=7, neighbor_count=7,
                      grouping_seed=123, device=CPU)
    job = Job(dose="1e5", view="dense", gridsize=2)
    root = tmp_path_factory.mktemp("phase_e")
    sha = write_bundle(root / job.relative_dir() / "wts.h5.zip", net.model, dose=1e5, dose_label="1e5",
                       extra={"view": "dense"})
    (root / "runs" / "1e5-dense").mkdir(parents=True)
    (root / "runs" / "1e5-dense" / "training_manifest.json").write_text(json.dumps({"jobs": [{
        "dose": "1e5", "view": "dense", "gridsize": 2, "network": "bp_unet", "seed": 7,
        "bundle_path": str(job.relative_dir() / "wts.h5.zip"), "sha256": sha, "epochs": 1, "best_epoch": 1,
        "final_val_loss": 0.0, "settings": {}}]}))
    return trained_bundles(root / "runs" / "1e5-dense" / "training_manifest.json", root, "1e5", "dense", 2)


def _run(tiny, split, bundles, out, choice=Choice(), epochs=2):
    """As hybrid@ runs: the fields on the stage's threads, then LSQML on one (torch's count restored)."""
    params = dataclasses.replace(tiny, hybrid=dataclasses.replace(tiny.hybrid, epochs=epochs))
    before = torch.get_num_threads()
    try:
        starts = start_fields(split, bundles, params)
        torch.set_num_threads(1)
        entries, timing = run_hybrid(split, starts, params, choice, network="bp_unet", out_dir=out, dose="1e5",
                                     view="dense", test_path="test.npz")
    finally:
        torch.set_num_threads(before)
    write_json(out / MANIFEST, {"jobs": entries})
    return starts, entries, timing


def test_the_hybrid_starts_from_each_bundle_and_never_reads_the_truth(tiny, splits, bundles, tmp_path, one_thread):
    """run_hybrid on a test split whose truth (objectGuess, Y) is noise writes the same bytes: the
    truth gives only the grid. Its object is not flat LSQML's of the same epochs (the network's field
    was the start); its entry and run record name the seed, the bundle and the file; and it never runs
    longer than tune@ chose for LSQML."""
    test = splits[1]
    rng = np.random.default_rng(0)
    poisoned = dataclasses.replace(
        test, objectGuess=np.exp(1j * rng.uniform(-3, 3, test.objectGuess.shape)).astype(np.complex64),
        Y=np.exp(1j * rng.uniform(-3, 3, test.Y.shape)).astype(np.complex64))
    starts, (entry,), (record,) = _run(tiny, test, bundles, tmp_path / "true")
    _, (other,), _ = _run(tiny, poisoned, bundles, tmp_path / "poisoned")
    assert entry["sha256"] == other["sha256"] and entry["status"] == "completed"
    assert (entry["network"], entry["seed"], entry["bundle_sha256"], entry["epochs_run"]) == (
        "bp_unet", 7, bundles[0].sha256, 2)
    assert entry["settings"]["object_init"] == START  # the same for every seed: the report's settings
    assert entry["start_sha256"] == field_digest(starts[0][1].field)
    assert record == {"network": "bp_unet", "seed": 7, "sha256": entry["sha256"], "pinn_seconds": starts[0][1].seconds,
                      "lsqml_seconds": record["lsqml_seconds"]} and record["lsqml_seconds"] > 0
    ((e, started),) = load_runs(tmp_path / "true", "bp_unet", bundles, {7: starts[0][1].field})
    assert load_runs(tmp_path / "true", "ptychopinn", [], {}) == []  # another network's runs are its own
    flat = lsqml(test, tiny.reconstruct, choice=Choice(epochs=2))
    assert started.object.shape == flat.object.shape and not np.array_equal(started.object, flat.object)
    # tune@ chose 1 epoch: the warm start runs 1, not hybrid.epochs' 2
    _, (short,), _ = _run(tiny, test, bundles, tmp_path / "short", choice=Choice(epochs=1))
    assert short["epochs_run"] == 1


def test_compare_takes_only_the_hybrid_runs_of_the_views_bundles(tiny, splits, bundles, tmp_path):
    """load_runs refuses a manifest of other bundles, a run from another field than the one compare@
    scores, a file that is not the one recorded, a missing file and a missing manifest, each naming
    the file and the stage to rerun."""
    out = tmp_path / "hybrid"
    starts, _, _ = _run(tiny, splits[1], bundles, out, epochs=1)
    fields = {7: starts[0][1].field}
    ((entry, result),) = load_runs(out, "bp_unet", bundles, fields)
    assert entry["seed"] == 7 and result.status == "completed"
    other = [dataclasses.replace(bundles[0], sha256="0" * 64)]
    with pytest.raises(ContractError, match=r"hybrid_manifest.json: its bp_unet runs started from other "
                                            r"bundles than the view's \(seeds \[7\]\); run `dvc repro`"):
        load_runs(out, "bp_unet", other, fields)
    with pytest.raises(ContractError, match=r"its ptychopinn runs started from other bundles than the view's \(seeds \[\]\)"):
        load_runs(out, "ptychopinn", bundles, fields)
    moved = fields[7].copy()
    moved[0, 0] += 1e-3  # one pixel of another inference
    with pytest.raises(ContractError, match="bp_unet seed 7 started from another field than the one scored"):
        load_runs(out, "bp_unet", bundles, {7: moved})
    npz = out / "bp_unet" / "seed_7" / "ptychi_reconstruction.npz"
    npz.write_bytes(npz.read_bytes() + b"\0")
    with pytest.raises(ContractError, match="bp_unet/seed_7/ptychi_reconstruction.npz: its SHA256 is not the one"):
        load_runs(out, "bp_unet", bundles, fields)
    npz.unlink()
    with pytest.raises(ContractError, match="ptychi_reconstruction.npz: cannot read it .*hybrid@"):
        load_runs(out, "bp_unet", bundles, fields)
    (out / MANIFEST).write_text(json.dumps({"jobs": [{"seed": 7}]}))
    with pytest.raises(ContractError, match="cannot read the hybrid manifest .*an entry without all of"):
        load_runs(out, "bp_unet", bundles, fields)
    (out / MANIFEST).unlink()
    with pytest.raises(ContractError, match="cannot read the hybrid manifest"):
        load_runs(out, "bp_unet", bundles, fields)
