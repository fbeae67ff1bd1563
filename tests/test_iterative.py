"""Phase F: pty-chi LSQML on simulated data, its output file, and its failures."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from fly64study import metrics
from fly64study.contract import ContractError, write_npz
from fly64study.iterative import load_result, lsqml, run_reconstruction
from fly64study.simulate import generate_dose


@pytest.fixture(scope="module")
def test_split(tiny):
    """The tiny profile's held-out split at 1e5 photons per pattern (N = 32, ~150 positions)."""
    return generate_dose(tiny.design, tiny.generate, "1e5")[1]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_lsqml_recovers_the_phase_of_a_tiny_problem(tiny, test_split, one_thread):
    result = lsqml(test_split, dataclasses.replace(tiny.reconstruct, epochs=20))
    assert result.status == "completed", result.error
    assert result.object.shape == test_split.objectGuess.shape  # the ground truth's frame
    assert result.cost.shape == (20,) and result.cost[-1] < 0.5 * result.cost[0]
    np.testing.assert_array_equal(result.probe, test_split.probeGuess)  # the known probe, kept fixed
    region = metrics.scanned_area(test_split.xcoords, test_split.ycoords, test_split.objectGuess.shape)
    aligned = metrics.align(result.object, test_split.objectGuess, region)
    scores, _ = metrics.component_metrics(aligned.phase, aligned.truth_phase, smooth_sigma=1.0)
    assert scores["ms_ssim"] >= 0.8
    # positions in the simulator's convention: no registration shift left to find
    assert max(abs(s) for s in aligned.shift_px) < 0.1


def test_lsqml_is_byte_reproducible_on_one_thread(tiny, test_split, one_thread):
    cfg = dataclasses.replace(tiny.reconstruct, epochs=3)
    a, b = lsqml(test_split, cfg), lsqml(test_split, cfg)
    assert a.object.tobytes() == b.object.tobytes()


def test_a_ptychi_failure_is_recorded_not_raised(tiny, test_split, tmp_path):
    broken = dataclasses.replace(test_split, probeGuess=test_split.probeGuess[:16, :16])  # pty-chi refuses it
    entry = run_reconstruction(broken, dataclasses.replace(tiny.reconstruct, epochs=2), out_dir=tmp_path,
                               dose="1e5", view="dense", test_path="test.npz")
    assert entry["status"] == "failed" and "Detector size" in entry["error"]
    saved = load_result(tmp_path / "ptychi_reconstruction.npz")
    assert saved.status == "failed" and saved.object.size == 0 and "Detector size" in saved.error
    assert "Detector size" in (tmp_path / "ptychi.log").read_text()
    assert not list(tmp_path.glob("*.tmp"))


def test_reconstruction_file_round_trip_and_refusals(tiny, test_split, tmp_path):
    entry = run_reconstruction(test_split, dataclasses.replace(tiny.reconstruct, epochs=2), out_dir=tmp_path,
                               dose="1e5", view="dense", test_path="test.npz")
    saved = load_result(tmp_path / "ptychi_reconstruction.npz")
    assert saved.status == entry["status"] == "completed"
    assert saved.cost.size == entry["epochs_run"] == 2
    assert saved.settings["algorithm"] == "LSQML" and saved.settings["object_init"].startswith("flat")
    bad = tmp_path / "bad.npz"
    write_npz(bad, {"probe": saved.probe, "cost": saved.cost,
                    "_metadata": np.array(json.dumps({"status": "completed"}))})
    with pytest.raises(ContractError, match="object: missing"):
        load_result(bad)
