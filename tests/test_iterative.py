"""Phase F: pty-chi LSQML on simulated data, its output file, and its failures."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from fly64study import metrics
from fly64study.contract import ContractError, write_npz
from fly64study.iterative import load_result, lsqml, run_reconstruction
from fly64study.profiles import compose
from fly64study.simulate import generate_dose


@pytest.fixture(scope="module")
def test_split(tiny):
    """The tiny profile's held-out split at 1e5 photons per pattern (N = 32, ~150 positions)."""
    return generate_dose(tiny.design, tiny.generate, "1e5")[1]


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


def test_lsqml_is_byte_reproducible_on_one_thread_and_its_seed_orders_the_batches(tiny, test_split, one_thread):
    """The same seed gives the same bytes, whatever torch's global generator did before; another seed
    another batch order (pty-chi's own shuffling generator ignored its random_seed)."""
    cfg = dataclasses.replace(tiny.reconstruct, epochs=3)
    a = lsqml(test_split, cfg)
    torch.manual_seed(12345)
    b = lsqml(test_split, cfg)
    assert a.object.tobytes() == b.object.tobytes()
    other = lsqml(test_split, dataclasses.replace(cfg, seed=cfg.seed + 1))
    assert other.status == "completed" and not np.array_equal(other.object, a.object)


def test_snapshots_are_the_objects_of_shorter_runs(tiny, test_split, one_thread):
    """tune@ scores LSQML every few epochs by stopping the run and going on: the object after 2 of 5
    epochs is, byte for byte, a 2-epoch run's, and the run ends where an uninterrupted one does."""
    from fly64study.iterative import Choice

    cfg = dataclasses.replace(tiny.reconstruct, epochs=5)
    stopped = lsqml(test_split, cfg, snapshot_every=2)
    assert [e for e, _ in stopped.snapshots] == [2, 4, 5]
    assert stopped.object.tobytes() == stopped.snapshots[-1][1].tobytes() == lsqml(test_split, cfg).object.tobytes()
    two = lsqml(test_split, cfg, choice=Choice(epochs=2))  # the tuned epochs: at most reconstruct.epochs
    assert two.cost.size == 2 and two.settings["epochs"] == 2 and two.snapshots == ()
    assert stopped.snapshots[0][1].tobytes() == two.object.tobytes()
    with pytest.raises(ContractError, match="runs 6 epochs, more than reconstruct.epochs 5: rerun tune"):
        lsqml(test_split, cfg, choice=Choice(epochs=6))


@pytest.mark.skipif(os.environ.get("FLY64STUDY_NUMERICS") == "native", reason="exact_sqrt is part of the pinning")
@pytest.mark.parametrize("choice, refine_probe", [(dict(), False), (dict(noise_model="poisson", tv_weight=0.1), False),
                                                  (dict(), True)], ids=["gaussian", "poisson-tv", "refine-probe"])
def test_lsqml_takes_no_float32_square_root_of_torch(tiny, test_split, one_thread, choice, refine_probe):
    """torch's float32 square root gave other bits on an Intel CPU than on an AMD one, and pty-chi
    takes one in every LSQML iteration (of 0-d tensors too, where it refines the probe): lsqml routes
    them to the correctly rounded root (numerics.exact_sqrt), so none reaches torch's kernel, from
    construction to the last epoch; without the routing the same trace sees them."""
    import contextlib

    from torch.utils._python_dispatch import TorchDispatchMode

    import fly64study.iterative
    from fly64study.iterative import Choice

    cfg = dataclasses.replace(tiny.reconstruct, epochs=1, refine_probe=refine_probe)
    roots = []

    class Roots(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if (func.overloadpacket is torch.ops.aten.sqrt
                    or func.overloadpacket is torch.ops.aten.pow and len(args) > 1 and args[1] == 0.5):
                roots.append(args[0].dtype)  # ATen takes a power of 0.5 with the same square root kernel
            return func(*args, **(kwargs or {}))

    with Roots():
        exact = lsqml(test_split, cfg, choice=Choice(**choice))
    assert exact.status == "completed", exact.error
    assert torch.float32 not in roots
    with pytest.MonkeyPatch.context() as m, Roots():
        m.setattr(fly64study.iterative, "exact_sqrt", contextlib.nullcontext)
        assert lsqml(test_split, cfg, choice=Choice(**choice)).status == "completed"
    assert torch.float32 in roots  # the trace sees them where they are not routed


def test_lsqml_leaves_no_default_device_mode_behind(tiny, test_split, one_thread, monkeypatch):
    """pty-chi makes "cpu" torch's default device, a Python mode that slowed every later torch call;
    lsqml drops it, after a run and after a failed one (that dropping it changes no bit, the
    phase F golden digests show)."""
    assert lsqml(test_split, dataclasses.replace(tiny.reconstruct, epochs=1)).status == "completed"
    assert not torch._C._is_torch_function_mode_enabled()
    import ptychi.api.task

    def fail(self, n_epochs=None):
        raise RuntimeError("injected")

    monkeypatch.setattr(ptychi.api.task.PtychographyTask, "run", fail)
    result = lsqml(test_split, dataclasses.replace(tiny.reconstruct, epochs=1))
    assert result.status == "failed" and "injected" in result.error
    assert not torch._C._is_torch_function_mode_enabled()


def test_a_ptychi_failure_is_recorded_not_raised(tiny, test_split, tmp_path):
    broken = dataclasses.replace(test_split, probeGuess=test_split.probeGuess[:16, :16])  # pty-chi refuses it
    entry, _ = run_reconstruction(broken, dataclasses.replace(tiny.reconstruct, epochs=2), out_dir=tmp_path,
                                  dose="1e5", view="dense", test_path="test.npz")
    assert entry["status"] == "failed" and "Detector size" in entry["error"]
    saved = load_result(tmp_path / "ptychi_reconstruction.npz")
    assert saved.status == "failed" and saved.object.size == 0 and "Detector size" in saved.error
    assert "Detector size" in (tmp_path / "ptychi.log").read_text()
    assert not list(tmp_path.glob("*.tmp"))


def test_reconstruction_file_round_trip_and_refusals(tiny, test_split, tmp_path):
    entry, seconds = run_reconstruction(test_split, dataclasses.replace(tiny.reconstruct, epochs=2), out_dir=tmp_path,
                                        dose="1e5", view="dense", test_path="test.npz")
    saved = load_result(tmp_path / "ptychi_reconstruction.npz")
    assert saved.status == entry["status"] == "completed"
    assert saved.cost.size == entry["epochs_run"] == 2 and seconds > 0
    assert saved.settings["algorithm"] == "LSQML" and saved.settings["object_init"].startswith("flat")
    bad = tmp_path / "bad.npz"
    write_npz(bad, {"probe": saved.probe, "cost": saved.cost,
                    "_metadata": np.array(json.dumps({"status": "completed"}))})
    with pytest.raises(ContractError, match="object: missing"):
        load_result(bad)


def test_the_chosen_settings_reach_ptychi(tiny, test_split, one_thread):
    from fly64study.iterative import Choice

    cfg = dataclasses.replace(tiny.reconstruct, epochs=3)
    plain, tv = lsqml(test_split, cfg), lsqml(test_split, cfg, choice=Choice(tv_weight=0.5))
    poisson = lsqml(test_split, cfg, choice=Choice(noise_model="poisson", step_size=0.5))
    assert tv.settings["tv_weight"] == 0.5 and poisson.settings["noise_model"] == "poisson"
    # each setting changes the result: a total-variation term smooths (lower total variation)
    tv_of = lambda o: float(np.abs(np.diff(np.angle(o), axis=0)).sum())  # noqa: E731
    assert tv_of(tv.object) < tv_of(plain.object) and not np.array_equal(poisson.object, plain.object)


def test_a_cost_curve_is_flat_from_its_last_steep_epoch():
    from fly64study.tuning import flat_from

    assert flat_from(np.array([10.0, 5.0, 4.0, 3.999, 3.9985])) == 3  # 4 -> 3.999 is below 0.1 %
    assert flat_from(np.array([10.0, 5.0, 2.0])) == 3  # still falling at the end: not flat before it
    assert flat_from(np.array([1.0, 1.0])) == 1
    assert flat_from(np.array([])) is None and flat_from(np.array([1.0, np.nan])) is None


def test_tuning_reads_the_training_split_only(tiny, tmp_path):
    """tune@<dose>-<view> on the tiny profile: a test split replaced by garbage changes nothing, while a
    poisoned truth of the training split changes the scores (the criterion reads that truth)."""
    import subprocess
    import sys

    from conftest import REPO, host_env
    from fly64study.contract import load_dataset, save_dataset
    from fly64study.overlap import build_view

    d = tiny.design
    phase_d = tmp_path / "phase_d"
    for part, split in zip(("train", "test"), generate_dose(d, tiny.generate, "1e5")):
        for name in ("dense", "sparse"):
            view, _ = build_view(split, view=name, fraction=d.views[name], neighbor_count=d.neighbor_count,
                                 subsampling_seed=d.seeds.subsampling, grouping_seed=d.seeds.grouping,
                                 min_positions=tiny.overlap.min_positions)
            save_dataset(phase_d / "dose_1e5" / name / f"{part}.npz", view)
    params = tmp_path / "params.yaml"
    params.write_text(compose("tiny", REPO / "profiles").replace("epochs: 10 ", "epochs: 4 "))

    def tune_cli(out: str, view: str = "dense") -> dict:
        proc = subprocess.run([sys.executable, str(REPO / "stages" / "tune.py"), "--params", str(params), "--dose",
                               "1e5", "--view", view, "--phase-d", str(phase_d), "--out", str(tmp_path / out)],
                              capture_output=True, text=True, env=dict(host_env(), PYTHONPATH=str(REPO / "src")))
        assert proc.returncode == 0, proc.stderr
        assert f"tune ({view}, dose=1e5) → LSQML gaussian" in proc.stdout
        return json.loads((tmp_path / out / "lsqml_tuning.json").read_text())

    first = tune_cli("a")
    scores = [row["ms_ssim_phase"] for row in first["grid"]]
    assert [(r["noise_model"], r["tv_weight"]) for r in first["grid"]] == [("gaussian", 0.0), ("gaussian", 0.1)]
    assert all(0 < s <= 1 for s in scores) and first["max_epochs"] == 4
    assert (first["dose"], first["view"]) == ("1e5", "dense") and first["train_data"].endswith("dense/train.npz")
    sparse = tune_cli("s", view="sparse")  # each view on its own training split: other positions, other scores
    assert (sparse["view"], sparse["n_positions"]) == ("sparse", load_dataset(phase_d / "dose_1e5/sparse/train.npz").n)
    assert sparse["train_data"].endswith("sparse/train.npz") and sparse["n_positions"] < first["n_positions"]
    assert [row["ms_ssim_phase"] for row in sparse["grid"]] != scores
    assert first["chosen"]["tv_weight"] == first["grid"][int(np.argmax(scores))]["tv_weight"]
    # score_every 5 > 4 epochs: the last epoch only, so that is the choice
    assert [r["ms_ssim_phase_by_epoch"] for r in first["grid"]] == [[[4, s]] for s in scores]
    assert first["chosen"]["epochs"] == 4
    (phase_d / "dose_1e5" / "dense" / "test.npz").write_bytes(b"not a dataset")
    tune_cli("b")
    assert (tmp_path / "a" / "lsqml_tuning.json").read_bytes() == (tmp_path / "b" / "lsqml_tuning.json").read_bytes()
    train = load_dataset(phase_d / "dose_1e5" / "dense" / "train.npz")
    poisoned = np.exp(1j * np.random.default_rng(0).uniform(-np.pi, np.pi, train.objectGuess.shape))
    save_dataset(phase_d / "dose_1e5" / "dense" / "train.npz",
                 dataclasses.replace(train, objectGuess=poisoned.astype(np.complex64)))
    assert [row["ms_ssim_phase"] for row in tune_cli("c")["grid"]] != scores


def test_a_tuning_record_is_checked_before_reconstruct_uses_it(tmp_path):
    from fly64study.contract import ContractError
    from fly64study.iterative import Choice

    path = tmp_path / "lsqml_tuning.json"
    good = {"dose": "1e3", "view": "dense", "chosen": {"noise_model": "poisson", "tv_weight": 0.1, "step_size": 1.0, "epochs": 20}}
    path.write_text(json.dumps(good))
    assert Choice.load(path, "1e3", "dense") == Choice("poisson", 0.1, 1.0, 20)
    with pytest.raises(ContractError, match="the tuning of dose '1e3', not '1e5'.*tune@1e5-dense"):
        Choice.load(path, "1e5", "dense")
    # one view's settings are not another's: sparse runs its own tune@
    with pytest.raises(ContractError, match="the tuning of view 'dense', not 'sparse'.*tune@1e3-sparse"):
        Choice.load(path, "1e3", "sparse")
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "view"}))  # a record from before 2026-12-01
    with pytest.raises(ContractError, match="no view .*tune@1e3-dense"):
        Choice.load(path, "1e3", "dense")
    for key, value, message in (("noise_model", "laplace", "noise_model 'laplace'"),
                                ("tv_weight", -0.1, "tv_weight -0.1"), ("step_size", float("nan"), "step_size nan"),
                                ("epochs", 0, "epochs 0 must be an integer >= 1"), ("epochs", 2.5, "epochs 2.5")):
        path.write_text(json.dumps({**good, "chosen": {**good["chosen"], key: value}}))
        with pytest.raises(ContractError, match=message):
            Choice.load(path, "1e3", "dense")
    path.write_text("{")
    with pytest.raises(ContractError, match="cannot read the LSQML tuning"):
        Choice.load(path, "1e3", "dense")


def test_tuning_side_by_side_equals_one_after_another_and_a_nan_score_never_wins(tiny, monkeypatch):
    """The grid points in worker processes (two, each running points in turn) give the grid of a
    run in turn in this process, byte for byte; a point whose score is not finite is recorded as
    unscored, not chosen."""
    from fly64study import tuning

    train, _ = generate_dose(tiny.design, tiny.generate, "1e5")
    cfg = dataclasses.replace(tiny.reconstruct, epochs=3)
    grid4 = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, step_sizes=(1.0, 0.5)))  # 4 points
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as tune@ runs in turn: on one thread (the workers pin it themselves)
    try:
        serial = tuning.tune(train, grid4, max_shift=3.0, workers=1)
    finally:
        torch.set_num_threads(threads)
    assert tuning.tune(train, grid4, max_shift=3.0, workers=2) == serial
    fake = iter([float("nan"), float("nan"), 0.5, 0.6])

    def scripted(field, split, max_shift):  # the scores the grid's snapshots get, in order
        return next(fake)

    monkeypatch.setattr(tuning, "score", scripted)  # in this process: workers=1
    every2 = dataclasses.replace(cfg, epochs=4, tune=dataclasses.replace(cfg.tune, score_every=2))
    result = tuning.tune(train, every2, max_shift=3.0, workers=1)
    first, second = result["grid"]
    assert first["ms_ssim_phase"] is None and first["error"] == "phase MS-SSIM is not finite at any scored epoch"
    assert first["ms_ssim_phase_by_epoch"] == [[2, None], [4, None]]
    assert result["chosen"]["tv_weight"] == second["tv_weight"] != first["tv_weight"]
    assert second["ms_ssim_phase"] == 0.6 and result["chosen"]["epochs"] == second["epochs"] == 4


def test_tuning_chooses_the_epochs_that_scored_best_and_fewer_on_a_tie(tiny, monkeypatch, one_thread):
    """LSQML's epochs are chosen as its other settings are: the best score on the training split
    (a point still improving at the cap gets the cap); equal scores go to the earlier point, then
    to fewer epochs."""
    from fly64study import tuning

    train, _ = generate_dose(tiny.design, tiny.generate, "1e5")
    cfg = dataclasses.replace(tiny.reconstruct, epochs=6)
    cfg = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, score_every=2))
    fake = iter([0.5, 0.6, 0.65, 0.7, 0.7, 0.6])  # point 1 still rising at 6; point 2 peaks at 2 and 4
    monkeypatch.setattr(tuning, "score", lambda field, split, max_shift: next(fake))
    result = tuning.tune(train, cfg, max_shift=3.0, workers=1)
    first, second = result["grid"]
    assert [e for e, _ in first["ms_ssim_phase_by_epoch"]] == [2, 4, 6]
    assert (first["epochs"], first["ms_ssim_phase"]) == (6, 0.65)
    assert (second["epochs"], second["ms_ssim_phase"]) == (2, 0.7)
    assert result["chosen"] == {"noise_model": "gaussian", "tv_weight": second["tv_weight"], "step_size": 1.0,
                                "epochs": 2}
