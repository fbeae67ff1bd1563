"""<network>+refine: a trained network fitted further to the counts of the split it reconstructs."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fly64study import train as train_module
from fly64study.bundle import load_inference_model, write_bundle
from fly64study.contract import save_dataset
from fly64study.refine import refine_job, schedule
from fly64study.simulate import generate_dose
from fly64study.train import Job, Schedule, train_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits(tiny):
    return generate_dose(tiny.design, tiny.generate, "1e5")  # (train, test), N = 32


@pytest.fixture(scope="module")
def trained(tiny, splits):
    """A gridsize-2 network of the tiny profile, trained one epoch on the training split."""
    cfg = dataclasses.replace(tiny.train, epochs=1)
    return train_model(splits[0], gridsize=2, cfg=cfg, seed=7, neighbor_count=7, grouping_seed=123, device=CPU)


def _schedule(**changes) -> Schedule:
    base = dict(epochs=2, batch_size=8, learning_rate=3e-4, n_groups=0, val_fraction=0.2, patience=1,
                lr_patience=0, thinning=0.5)
    return Schedule(**{**base, **changes})


def test_no_better_held_out_loss_keeps_the_trained_network(splits, trained):
    """The trained network is epoch 0: an epoch that wrecks it (a learning rate of 10) raises the
    held-out loss, and the network comes back exactly as it went in."""
    before = {k: v.clone() for k, v in trained.model.net.state_dict().items()}
    result = train_model(splits[1], gridsize=2, cfg=_schedule(learning_rate=10.0), seed=7, neighbor_count=7,
                         grouping_seed=123, device=CPU, init=trained.model.net, fixed_split=True)
    assert result.best_epoch == 0 and len(result.history) == 1  # patience 1: one epoch tried
    assert not result.history[0]["val_loss"] <= result.start_val_loss  # higher, or NaN: diverged
    after = result.model.net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    with pytest.raises(ValueError, match="keep no checkpoint"):
        train_model(splits[1], gridsize=2, cfg=_schedule(), seed=7, neighbor_count=7, grouping_seed=123, device=CPU,
                    init=trained.model.net, fixed_split=True, checkpoint_path=Path("unused.h5"))


@pytest.mark.parametrize("fixed", [True, False])
def test_a_refinement_draws_each_patterns_thinning_split_once(splits, trained, monkeypatch, fixed):
    """Refining, the network's input share of a pattern is the same draw every epoch, so the target
    share (what the loss scores) is never an input. Fresh draws every epoch, as training makes them,
    would show the network every count of the patterns it reconstructs over a few epochs."""
    seen_by_pattern: dict[str, set[str]] = {}
    real = train_module.batch_loss

    def spy(model, amp, counts, offsets, thinning, generator, split=None):
        if model.training:  # the training steps (the validation loss has its own fixed draws)
            seen, target = split if split is not None else train_module.thin(counts, thinning, generator)
            assert torch.equal(seen + target, counts) and (target > 0).any()
            for c, s in zip(counts.reshape(-1, *counts.shape[-2:]), seen.reshape(-1, *seen.shape[-2:])):
                key = hashlib.sha256(c.numpy().tobytes()).hexdigest()
                seen_by_pattern.setdefault(key, set()).add(hashlib.sha256(s.numpy().tobytes()).hexdigest())
            split = (seen, target)
        return real(model, amp, counts, offsets, thinning, generator, split)

    monkeypatch.setattr(train_module, "batch_loss", spy)
    train_model(splits[1], gridsize=2, cfg=_schedule(epochs=2, patience=2), seed=7, neighbor_count=7,
                grouping_seed=123, device=CPU, init=trained.model.net, fixed_split=fixed)
    draws = [len(v) for v in seen_by_pattern.values()]
    assert draws and (max(draws) == 1) == fixed


def test_refining_never_reads_the_truth(tiny, splits, trained, tmp_path):
    """refine_job on a test split whose truth (objectGuess, Y) is noise writes the same bundle bytes."""
    job = Job(dose="1e5", view="dense", gridsize=2)
    train_dir = tmp_path / "phase_e"
    bundle = train_dir / job.relative_dir() / "wts.h5.zip"
    sha = write_bundle(bundle, trained.model, dose=1e5, dose_label="1e5", extra={"view": "dense"})
    runs = train_dir / "runs"
    (runs / "1e5-dense").mkdir(parents=True)
    (runs / "1e5-dense" / "training_manifest.json").write_text(json.dumps({"jobs": [{
        "dose": "1e5", "view": "dense", "gridsize": 2, "network": "bp_unet", "seed": 7,
        "bundle_path": str(job.relative_dir() / "wts.h5.zip"), "sha256": sha, "epochs": 1, "best_epoch": 1,
        "final_val_loss": 0.0, "settings": {"width": 8}}]}))
    test = splits[1]
    rng = np.random.default_rng(0)
    poisoned = dataclasses.replace(
        test, objectGuess=np.exp(1j * rng.uniform(-3, 3, test.objectGuess.shape)).astype(np.complex64),
        Y=np.exp(1j * rng.uniform(-3, 3, test.Y.shape)).astype(np.complex64))
    params = dataclasses.replace(tiny, refine=dataclasses.replace(tiny.refine, epochs=2))
    shas = []
    for name, split in (("true", test), ("poisoned", poisoned)):
        save_dataset(tmp_path / name / "phase_d" / "dose_1e5" / "dense" / "test.npz", split)
        entries, _, histories = refine_job(job, params, phase_d=tmp_path / name / "phase_d",
                                           manifest=runs / "1e5-dense" / "training_manifest.json",
                                           trained_root=train_dir, artifact_root=tmp_path / name / "refine", device=CPU)
        (entry,) = entries
        assert entry["refined_from"] == sha and entry["bundle_path"] == "dose_1e5/dense/bp_unet/gs2/wts.h5.zip"
        # the tiny profile refines [ptychopinn, bp_unet]: the first has the plain columns, BP-UNet its own
        assert list(histories) == ["_bp_unet"] and histories["_bp_unet"][0]["epoch"] == 0  # epoch 0: before refining
        shas.append(entry["sha256"])
        assert load_inference_model(tmp_path / name / "refine" / entry["bundle_path"], entry["sha256"]).cfg.gridsize == 2
    assert shas[0] == shas[1]


def test_the_schedule_takes_the_refine_section_and_trainings_split(tiny):
    s = schedule(tiny)
    assert (s.epochs, s.learning_rate, s.patience) == (tiny.refine.epochs, tiny.refine.learning_rate,
                                                       tiny.refine.patience)
    assert (s.thinning, s.val_fraction, s.batch_size, s.n_groups, s.lr_patience) == (
        tiny.train.thinning, tiny.train.val_fraction, tiny.train.batch_size, 0, 0)
