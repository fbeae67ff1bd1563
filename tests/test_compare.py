"""Phase G: stitching, one comparison, and the report, on small known inputs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from fly64study import metrics, report
from fly64study.compare import DVC_METRICS, Candidate, compare, write_comparison
from fly64study.inference import stitch
from fly64study.report import summarise, targets, write_report
from fly64study.simulate import generate_dose


@pytest.fixture(scope="module")
def test_split(tiny):
    return generate_dose(tiny.design, tiny.generate, "1e5")[1]


def test_stitching_the_true_patches_gives_back_the_object(test_split):
    ds = test_split
    field = stitch(ds.Y, ds.xcoords, ds.ycoords, ds.objectGuess.shape, np.abs(ds.probeGuess) ** 2)
    region = metrics.scanned_area(ds.xcoords, ds.ycoords, field.shape)
    rms = lambda a: np.sqrt(np.mean(np.abs(a - ds.objectGuess[region]) ** 2))  # noqa: E731
    assert rms(field[region]) < 0.05 < 0.2 * rms(np.ones_like(field[region]))  # edge ringing of hard particles only
    assert max(abs(s) for s in metrics.register(field, ds.objectGuess, region, max_shift=3.0)) < 0.05  # same position convention
    assert field[0, 0] == 1  # never under a probe: flat


def test_phase_synchronisation_turns_patches_offset_at_random_back_into_one_object(test_split):
    """The true patches, each turned by a random constant phase (what no pattern fixes): stitched as
    they are, the field is far from the object; after synchronising their phases it is the object
    again, up to one global phase, which the comparison removes anyway."""
    from fly64study.inference import synchronise_phases

    ds = test_split
    window = np.abs(ds.probeGuess) ** 2
    turned = ds.Y * np.exp(1j * np.random.default_rng(0).uniform(-np.pi, np.pi, ds.n))[:, None, None]
    region = metrics.scanned_area(ds.xcoords, ds.ycoords, ds.objectGuess.shape)

    def error(patches):
        field = stitch(patches, ds.xcoords, ds.ycoords, ds.objectGuess.shape, window)[region]
        truth = ds.objectGuess[region]
        field = field * np.exp(1j * np.angle(np.vdot(field, truth)))  # one global phase removed
        return float(np.sqrt(np.mean(np.abs(field - truth) ** 2)))

    synced = synchronise_phases(turned, ds.xcoords, ds.ycoords, window)
    assert error(synced) < 0.1 < 0.5 < error(turned), (error(synced), error(turned))
    assert error(synced) < 1.5 * error(ds.Y)  # as good as the true patches' stitching
    assert np.array_equal(synchronise_phases(turned, ds.xcoords, ds.ycoords, window, iterations=0),
                          turned.astype(np.complex64))  # no iterations: untouched


def test_phase_synchronisation_converges_on_a_scan_of_the_default_profile_s_size():
    """400 positions (a default dense split has 389), each patch turned by a random constant phase:
    synchronised, every patch agrees with every other to a micro-radian (power iteration from the
    spanning tree's phases; from a flat start 100 iterations left 0.15 rad)."""
    from scipy import ndimage

    from fly64study.inference import synchronise_phases
    from fly64study.physics import make_probe
    from fly64study.simulate import extract_patches

    rng = np.random.default_rng(1)
    N = 64
    obj = np.exp(3j * ndimage.gaussian_filter(rng.standard_normal((400, 400)), 4)).astype(np.complex64)
    x, y = (a.ravel() + rng.uniform(-2, 2, 400) for a in np.meshgrid(np.arange(20) * 15 + 50, np.arange(20) * 15 + 50))
    patches = extract_patches(obj, x, y, N)
    window = np.abs(make_probe(N, aperture=0.4, central_stop=0.3, defocus=6.0)) ** 2
    turned = patches * np.exp(1j * rng.uniform(-np.pi, np.pi, len(x)))[:, None, None]
    left = np.angle(np.sum(window * synchronise_phases(turned, x, y, window) * np.conj(patches), axis=(-2, -1)))
    assert np.abs(np.angle(np.exp(1j * (left - left[0])))).max() < 1e-4


def _comparison(ds, tiny, dose, view):
    flat = np.ones_like(ds.objectGuess)
    return compare(ds, [Candidate("BP-UNet", _noisy(ds, 0.1, 0), 1.5, "test"),
                        Candidate("BP-UNet-gs1", flat, 0.5, "flat object"),
                        Candidate("LSQML", None, 3.0, "pty-chi failed: test")],
                   dose=dose, view=view, cfg=tiny.design.metrics)


def test_comparison_scores_each_model_and_keeps_a_failed_one(test_split, tiny, tmp_path):
    comp = _comparison(test_split, tiny, "1e5", "dense")
    models = comp.summary["models"]
    assert models["BP-UNet"]["ms_ssim_phase"] > 0.5 > models["BP-UNet-gs1"]["ms_ssim_phase"]
    assert models["BP-UNet"]["mae_phase"] < models["BP-UNet-gs1"]["mae_phase"]
    assert models["LSQML"]["status"] == "failed"
    rows_, cols_ = comp.summary["crop"]["rows"], comp.summary["crop"]["cols"]
    in_crop = comp.summary["photons_per_pixel_mean"] * (rows_[1] - rows_[0]) * (cols_[1] - cols_[0])
    incident = comp.summary["incident_photons_per_exposure"]
    assert incident > 1e5  # the object absorbs: more photons arrive than the 1e5 detected per pattern
    assert 0.25 * test_split.n * incident < in_crop <= test_split.n * incident  # edge exposures spill out of the crop
    assert comp.summary["shot_noise_phase_bound_rad"] == pytest.approx(
        1 / (2 * np.sqrt(comp.summary["photons_per_pixel_mean"])), rel=0.5)
    write_comparison(tmp_path, comp)
    # dvc metrics: the headline numbers of the models that completed, nothing else
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        m: {k: models[m][k] for k in DVC_METRICS} for m in ("BP-UNet", "BP-UNet-gs1")}
    with open(tmp_path / "comparison_metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["dose", "view", "model", "seed", "alignment", "metric", "amplitude", "phase", "value",
                             "note"]
    pinn = {r["metric"]: r for r in rows if r["model"] == "BP-UNet" and r["alignment"] == "aligned"}
    assert float(pinn["ms_ssim"]["phase"]) > 0.5 and pinn["registration"]["value"] == "ok"
    assert "wall_time_s" not in pinn and comp.timing["BP-UNet"] == 1.5  # a run record, not a tracked number
    fixed = {r["metric"]: r for r in rows if r["model"] == "BP-UNet" and r["alignment"] == "fixed-frame"}
    assert set(fixed) >= {"ms_ssim", "ms_ssim_smoothed", "frc_low_frequency", "phase_offset_rad"}
    assert "shift_x_px" not in fixed  # nothing is registered in the fixed frame
    failed = [r for r in rows if r["model"] == "LSQML"]
    assert failed and all(r["phase"] == "" and r["note"] == "pty-chi failed: test" for r in failed)
    with open(tmp_path / "frc_curves.csv") as fh:
        curves = list(csv.DictReader(fh))
    assert {(r["model"], r["alignment"], r["component"]) for r in curves} == {
        (m, a, c) for m in ("BP-UNet", "BP-UNet-gs1") for a in metrics.ALIGNMENTS for c in ("amplitude", "phase")}
    assert (tmp_path / "comparison.png").stat().st_size > 20_000


def _job_figures(root: Path, summary: dict) -> Path:
    """What compare@ draws per job and the report embeds: a 2 x 2 stand-in PNG each."""
    for c in summary["jobs"]:
        for name in ("comparison.png", "frc_curves.png"):
            (root / f"dose_{c['dose']}" / c["view"]).mkdir(parents=True, exist_ok=True)
            plt.imsave(root / f"dose_{c['dose']}" / c["view"] / name, np.eye(2))
    return root


def test_report_summarises_means_bests_deltas_and_failures(test_split, tiny, tmp_path):
    comps = [_comparison(test_split, tiny, "1e5", v).summary for v in ("dense", "sparse")]
    runs = [{"dose": "1e5", "view": "dense", "n_positions": 10, "status": "failed", "error": "test",
             "final_cost": None, "epochs_run": 0}]
    summary = summarise(comps, runs)
    stats = summary["per_model"]["BP-UNet"]["ms_ssim_phase"]
    assert stats["n"] == 2 and stats["best"] >= stats["mean"]
    delta = summary["deltas"]["BP-UNet - BP-UNet-gs1"]["per_job"][0]
    m = comps[0]["models"]
    assert delta["ms_ssim_phase"] == pytest.approx(m["BP-UNet"]["ms_ssim_phase"] - m["BP-UNet-gs1"]["ms_ssim_phase"])
    assert summary["deltas"]["BP-UNet - LSQML"]["mean"]["ms_ssim_phase"] is None  # LSQML failed everywhere
    assert len(summary["failed"]) == 2
    write_report(tmp_path, summary, _job_figures(tmp_path / "g", summary))
    md = (tmp_path / "metrics_summary.md").read_text()
    assert "failed: pty-chi failed: test" in md and "BP-UNet - LSQML" in md
    # a model this profile did not run (no PtychoPINN here, no refinement) is no row and no failure
    assert summary["models"] == ["BP-UNet", "BP-UNet-gs1", "LSQML"] and list(summary["per_model"]) == summary["models"]
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert not [r for r in rows if "| PtychoPINN" in r or "+refine" in r], rows
    assert [line for line in md.split("## Failed")[1].splitlines() if line.startswith("- ")] == [
        "- LSQML at dense@1e5: pty-chi failed: test", "- LSQML at sparse@1e5: pty-chi failed: test"]
    assert not (tmp_path / "metrics.json").exists()  # dvc metrics are each comparison's own
    with open(tmp_path / "plots" / "ms_ssim_phase_dense.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert float(row["BP-UNet"]) > float(row["BP-UNet-gs1"]) and row["LSQML"] == ""
    assert (tmp_path / "ms_ssim_vs_dose.png").is_file() and (tmp_path / "frc_and_phase_error_vs_fluence.png").is_file()


def _noisy(ds, sigma, seed):
    noise = np.exp(1j * sigma * np.random.default_rng(seed).standard_normal(ds.objectGuess.shape))
    return (ds.objectGuess * noise).astype(np.complex64)


def test_each_seed_is_scored_and_the_report_gives_mean_sd_and_significance(test_split, tiny, tmp_path):
    ds = test_split
    pinn = [Candidate("BP-UNet", _noisy(ds, sigma, s), 1.0, f"seed {s}", seed=s)
            for s, sigma in ((7, 0.10), (8, 0.12), (9, 0.14))]
    baseline = [Candidate("BP-UNet-gs1", _noisy(ds, sigma, s), 1.0, "b", seed=s) for s, sigma in ((7, 0.11), (8, 0.9))]
    ptychi = Candidate("LSQML", _noisy(ds, 0.4, 0), 2.0, "LSQML")
    # each seed's refinement a little better than its own PINN: paired by seed, a consistent small gain
    refined = [Candidate("BP-UNet+refine", _noisy(ds, sigma - 0.01, s), 1.0, "r", seed=s)
               for s, sigma in ((7, 0.10), (8, 0.12), (9, 0.14))]
    # LSQML from each seed's field: made from that seed's PINN too, so paired the same way
    started = [Candidate("BP-UNet+LSQML", _noisy(ds, sigma - 0.02, s), 1.0, "h", seed=s)
               for s, sigma in ((7, 0.10), (8, 0.12), (9, 0.14))]
    comp = compare(ds, pinn + refined + started + baseline + [ptychi], dose="1e5", view="dense",
                   cfg=tiny.design.metrics)
    models = comp.summary["models"]
    one = [compare(ds, [c], dose="1e5", view="dense", cfg=tiny.design.metrics).summary["models"]["BP-UNet"]
           for c in pinn]
    scores = [m["ms_ssim_phase"] for m in one]
    m = models["BP-UNet"]
    assert m["seeds"] == [7, 8, 9] and [m["per_seed"][str(s)]["ms_ssim_phase"] for s in (7, 8, 9)] == scores
    assert m["ms_ssim_phase"] == pytest.approx(np.mean(scores))
    assert m["sd"]["ms_ssim_phase"] == pytest.approx(np.std(scores, ddof=1)) and m["sd"]["ms_ssim_phase"] > 0
    assert "sd" not in models["LSQML"] and "seeds" not in models["LSQML"]  # one run: as it was
    write_comparison(tmp_path / "g", comp)
    dvc = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert dvc["BP-UNet"]["ms_ssim_phase_sd"] == pytest.approx(m["sd"]["ms_ssim_phase"])
    with open(tmp_path / "g" / "comparison_metrics.csv") as fh:
        seeds = {(r["model"], r["seed"]) for r in csv.DictReader(fh)}
    assert seeds == {("BP-UNet", "7"), ("BP-UNet", "8"), ("BP-UNet", "9"), ("BP-UNet-gs1", "7"),
                     ("BP-UNet-gs1", "8"), ("LSQML", ""), *((model, str(s)) for s in (7, 8, 9)
                                                          for model in ("BP-UNet+refine", "BP-UNet+LSQML"))}
    summary = summarise([comp.summary], [])
    vs_ptychi = summary["deltas"]["BP-UNet - LSQML"]["per_job"][0]
    # LSQML ran once: the spread is the PINN's sd alone; a 0.1-rad PINN is far better than a 0.4-rad LSQML
    assert vs_ptychi["ms_ssim_phase_spread"] == pytest.approx(m["sd"]["ms_ssim_phase"])
    assert vs_ptychi["ms_ssim_phase_significant"] is True
    # BP-UNet-gs1's two seeds differ wildly (one as good as the PINN): its spread swamps the delta
    vs_base = summary["deltas"]["BP-UNet - BP-UNet-gs1"]["per_job"][0]
    spread = np.hypot(m["sd"]["ms_ssim_phase"], models["BP-UNet-gs1"]["sd"]["ms_ssim_phase"])
    assert vs_base["ms_ssim_phase_spread"] == pytest.approx(spread)
    assert 0 < vs_base["ms_ssim_phase"] < spread and vs_base["ms_ssim_phase_significant"] is False
    # the refinement against its own PINN: the spread of the per-seed differences, not of the two means
    vs_own = summary["deltas"]["BP-UNet+refine - BP-UNet"]["per_job"][0]
    r = models["BP-UNet+refine"]
    diffs = [r["per_seed"][s]["ms_ssim_phase"] - m["per_seed"][s]["ms_ssim_phase"] for s in ("7", "8", "9")]
    assert vs_own["ms_ssim_phase_spread"] == pytest.approx(np.std(diffs, ddof=1))
    assert vs_own["ms_ssim_phase_spread"] < np.hypot(m["sd"]["ms_ssim_phase"], r["sd"]["ms_ssim_phase"])
    assert min(diffs) > 0 and vs_own["ms_ssim_phase_significant"] is True
    h = models["BP-UNet+LSQML"]
    vs_start = summary["deltas"]["BP-UNet+LSQML - BP-UNet"]["per_job"][0]
    diffs = [h["per_seed"][s]["ms_ssim_phase"] - m["per_seed"][s]["ms_ssim_phase"] for s in ("7", "8", "9")]
    assert vs_start["ms_ssim_phase_spread"] == pytest.approx(np.std(diffs, ddof=1))
    assert summary["deltas"]["BP-UNet+LSQML - LSQML"]["per_job"][0]["ms_ssim_phase_spread"] == pytest.approx(
        h["sd"]["ms_ssim_phase"])  # LSQML ran once: not paired
    write_report(tmp_path / "r", summary, _job_figures(tmp_path / "g", summary))
    md = (tmp_path / "r" / "metrics_summary.md").read_text()
    assert "| BP-UNet (3 seeds) |" in md and "| BP-UNet-gs1 (2 seeds) |" in md
    assert f"{m['ms_ssim_phase']:.3f} ± {m['sd']['ms_ssim_phase']:.3f}" in md
    assert f"{vs_ptychi['ms_ssim_phase']:+.3f} ± {vs_ptychi['ms_ssim_phase_spread']:.3f} *" in md
    # the report states each model's ratio to LSQML and the targets (one job: nothing to call monotone)
    ratio = m["ms_ssim_phase"] / models["LSQML"]["ms_ssim_phase"]
    assert "## Against the study's targets" in md and f"| dense | 1e5 | BP-UNet | {ratio:.4f} |" in md
    # the best plain network (the only one here: no likelihood gap to choose by) against the 0.95 target
    assert f"| dense | 1e5 | BP-UNet | — / — | {ratio:.4f} | ≥ 0.95 | met | ≥ 99 % | not scored (no gap) |" in md
    # one seed everywhere: no spread, and no delta is called significant
    single = summarise([_comparison(ds, tiny, "1e5", "dense").summary], [])
    row = single["deltas"]["BP-UNet - BP-UNet-gs1"]["per_job"][0]
    assert row["ms_ssim_phase_spread"] is None and row["ms_ssim_phase_significant"] is None


def test_a_training_manifest_digest_that_does_not_match_the_bundle_is_refused(tmp_path):
    import torch

    from fly64study.bundle import BundleError, write_bundle
    from fly64study.inference import pinn_field, trained_bundles
    from fly64study.networks import Autoencoder, network_config
    from fly64study.physics import make_probe
    from conftest import small_dataset

    model = Autoencoder(network_config(16, 1, 2.0, "ptychopinn", {"n_filters_scale": 0.25}),
                        torch.from_numpy(make_probe(16, aperture=0.4, central_stop=0.3, defocus=1.0)))
    sha = write_bundle(tmp_path / "dose_1e3/baseline/gs1/wts.h5.zip", model, dose=1e3, dose_label="1e3")
    runs = tmp_path / "runs" / "1e3-baseline"
    runs.mkdir(parents=True)
    entry = {"dose": "1e3", "view": "baseline", "gridsize": 1, "network": "ptychopinn", "seed": 7, "epochs": 3, "best_epoch": 2,
             "final_val_loss": 0.5, "bundle_path": "dose_1e3/baseline/gs1/wts.h5.zip", "sha256": "0" * 64}
    (runs / "training_manifest.json").write_text(json.dumps({"jobs": [entry]}))
    (bundle,) = trained_bundles(runs / "training_manifest.json", tmp_path, "1e3", "baseline", 1, network="ptychopinn")
    path, recorded = bundle.path, bundle.sha256
    assert bundle.seed == 7 and bundle.training == {"epochs_run": 3, "best_epoch": 2, "final_val_loss": 0.5}
    assert recorded == "0" * 64 != sha
    with pytest.raises(BundleError, match=f"SHA256 {sha} differs from the expected 0000"):
        pinn_field(path, small_dataset(N=16), neighbor_count=7, grouping_seed=1, expected_sha256=recorded)


def test_a_metrics_file_takes_numbers_only(tmp_path):
    from fly64study.files import write_metrics

    write_metrics(tmp_path / "m.json", {"LSQML": {"ms_ssim_phase": 0.9, "frc": None}, "n": 3})
    assert json.loads((tmp_path / "m.json").read_text()) == {"LSQML": {"ms_ssim_phase": 0.9}, "n": 3}
    for bad in ({"view": "dense"}, {"LSQML": {"beats_flat": True}}, {"crop": [1, 2]}):
        with pytest.raises(TypeError, match="is not a number"):
            write_metrics(tmp_path / "bad.json", bad)
    assert not (tmp_path / "bad.json").exists()


def _job(view, f, dose, scores, sd=None):
    """A comparison summary with only what the targets read: phase MS-SSIM per model (PtychoPINN,
    PtychoPINN+refine, BP-UNet-gs1, LSQML; None: failed), and PtychoPINN's sd over three seeds."""
    models = {m: {"status": "completed", "ms_ssim_phase": v} if v is not None else {"status": "failed"}
              for m, v in zip(("PtychoPINN", "PtychoPINN+refine", "BP-UNet-gs1", "LSQML"), scores)}
    if sd is not None:
        models["PtychoPINN"].update(seeds=[7, 8, 9], sd={"ms_ssim_phase": sd})
    return {"view": view, "dose": dose, "nphotons": float(dose), "overlap": {"f": f}, "models": models}


def test_the_report_states_each_target_and_whether_it_was_met(tmp_path):
    # "wide" has the largest overlap but sorts after "narrow"; given out of order, as no caller should
    jobs = [_job("wide", 0.7, "1e4", (1.05, 0.90, 0.80, 0.93), sd=0.02),
            _job("wide", 0.7, "1e3", (0.70, 0.82, 0.85, 0.80), sd=0.03),
            _job("wide", 0.7, "1e5", (0.89, 0.95, 0.80, 0.98), sd=0.01),
            _job("wide", 0.7, "1e6", (0.90, 0.96, 0.90, None)),
            _job("narrow", 0.2, "1e3", (0.20, 0.20, 0.30, 0.40), sd=0.001),
            _job("narrow", 0.2, "1e5", (0.60, 0.60, 0.30, 0.75)),
            _job("single", 0.1, "1e5", (0.5, 0.5, 0.5, 0.6))]
    t = targets(jobs)
    assert t["view"] == "wide"
    r = {(x["view"], x["dose"], x["model"]): x for x in t["ratios"]}
    assert r["wide", "1e3", "PtychoPINN"]["ratio"] == pytest.approx(0.875) and r["wide", "1e3", "BP-UNet-gs1"]["target"] is None
    assert r["narrow", "1e5", "PtychoPINN"]["ratio"] == pytest.approx(0.8) and r["narrow", "1e5", "PtychoPINN"]["target"] is None
    assert r["wide", "1e6", "PtychoPINN"]["ratio"] is None and r["wide", "1e6", "BP-UNet-gs1"]["ratio"] is None  # LSQML failed
    # the best plain network per job of the largest overlap against 0.95x LSQML (here PtychoPINN, the only one),
    # its likelihood gap against 99 % at the highest dose; a job whose LSQML failed stays, unscored
    best = {x["dose"]: x for x in t["best_plain"]}
    assert list(best) == ["1e3", "1e4", "1e5", "1e6"] and {x["model"] for x in best.values()} == {"PtychoPINN"}
    assert (best["1e3"]["ratio"], best["1e3"]["met"]) == (pytest.approx(0.875), False)
    # the report's findings: a miss at one dose is a miss, though 1e6 could not be scored
    first = report.findings({"targets": t})[0]
    assert "every wide dose: **missed** (PtychoPINN 0.875× at 1e3" in first and "not scored at 1e6" in first, first
    assert best["1e4"]["met"] is True and best["1e5"]["met"] is False and best["1e6"]["met"] is None
    assert [x["gap_target"] for x in best.values()] == [None, None, None, 0.99] and best["1e6"]["gap_met"] is None
    # of two plain networks the one closing more of its likelihood gap on the training split (thinned) is
    # chosen, whatever the test split says: here BP-UNet, though PtychoPINN scores higher on the test split
    two = _job("wide", 0.7, "1e5", (0.95, 0.95, 0.5, 1.0))
    two["models"]["PtychoPINN"].update(likelihood_gap_closed=0.995, likelihood_gap_closed_thinned=0.93)
    two["models"]["BP-UNet"] = {"status": "completed", "ms_ssim_phase": 0.9, "likelihood_gap_closed": 0.98,
                                "likelihood_gap_closed_thinned": 0.95}
    (chosen,) = targets([two])["best_plain"]
    assert (chosen["model"], chosen["ratio"], chosen["met"], chosen["gap_closed"], chosen["gap_met"]) == (
        "BP-UNet", pytest.approx(0.9), False, 0.98, False)
    # the best PINN-based model at the lowest dose (1e3, though given second): the refinement, 1.025x;
    # not BP-UNet-gs1 (1.0625x there), not the 1.129x PtychoPINN at 1e4
    assert t["best_pinn_at_lowest_dose"] == {"view": "wide", "dose": "1e3", "model": "PtychoPINN+refine",
                                             "ratio": pytest.approx(1.025), "target": 1.0, "met": True}
    tie = targets([_job("wide", 0.7, "1e3", (0.7, 0.7, 0.1, 0.8))])["best_pinn_at_lowest_dose"]
    assert tie["model"] == "PtychoPINN" and tie["met"] is False  # a refinement that changed nothing is not credited
    warm = _job("wide", 0.7, "1e3", (0.7, 0.7, 0.1, 0.8))
    warm["models"]["PtychoPINN+LSQML"] = {"status": "completed", "ms_ssim_phase": 0.84}
    best = targets([warm])["best_pinn_at_lowest_dose"]  # LSQML started from the network counts as PINN-based
    assert (best["model"], best["ratio"], best["met"]) == ("PtychoPINN+LSQML", pytest.approx(1.05), True)
    rising = {(x["view"], x["model"]): x["monotone"] for x in t["monotone_in_dose"]}
    assert rising["wide", "PtychoPINN"] is False  # 1.05 at 1e4, then 0.89
    assert rising["wide", "BP-UNet-gs1"] is False and rising["wide", "PtychoPINN+refine"] is True
    assert rising["narrow", "BP-UNet-gs1"] is True  # 0.30, 0.30: a tie is not a fall
    assert rising["wide", "LSQML"] is None and rising["single", "PtychoPINN"] is None  # a failed job; one dose
    spread = {(x["view"], x["dose"]): (x["target"], x["met"]) for x in t["seed_spread"]}
    assert spread == {("wide", "1e3"): (0.02, False), ("wide", "1e4"): (0.02, True), ("wide", "1e5"): (0.02, True),
                      ("narrow", "1e3"): (None, None)}  # the target is the largest overlap's
    md = "\n".join(report._targets_markdown(t))
    assert "| wide | 1e3 | PtychoPINN | — / — | 0.8750 | ≥ 0.95 | **missed** |  |  |" in md
    assert "| wide | 1e6 | PtychoPINN | — / — | — | ≥ 0.95 | not scored (a model failed) | ≥ 99 % | not scored (no gap) |" in md
    assert "| wide | 1e3 | BP-UNet-gs1 | 1.0625 |" in md  # every model's ratio, no target
    assert "Best PINN-based model at wide@1e3: PtychoPINN+refine, 1.0250× LSQML (target ≥ 1.0×: met)." in md
    assert "| wide | BP-UNet-gs1 | 1e3 0.850, 1e4 0.800, 1e5 0.800, 1e6 0.900 | **no** |" in md
    assert "| wide | 1e3 | PtychoPINN | 3 | 0.030 | ≤ 0.02 | **missed** |" in md


def test_the_report_says_where_lsqml_stopped_before_converging():
    """tune@'s record gives LSQML's epochs: at the cap with a score still rising by more than
    FLAT_GAIN_PER_EPOCH is a run stopped early, and the report says the ratios to it likely flatter
    the PINN (on that view only: each view is tuned on its own); a choice below the cap peaked; a
    record it cannot read is refused by name."""
    from fly64study.contract import ContractError

    def record(dose, curves, chosen_epochs, cap=30, view="wide"):
        grid = [{"noise_model": "gaussian", "tv_weight": tv, "step_size": 1.0,
                 "ms_ssim_phase_by_epoch": [[e, ms] for e, ms in curve], "epochs": chosen_epochs if tv else 10,
                 "ms_ssim_phase": max(ms for _, ms in curve if ms is not None)} for tv, curve in curves]
        return {"dose": dose, "view": view, "max_epochs": cap, "grid": grid,
                "chosen": {"noise_model": "gaussian", "tv_weight": 0.1, "step_size": 1.0, "epochs": chosen_epochs}}

    flat = [(0.0, [(10, 0.9), (20, 0.8), (30, 0.7)])]
    rising = record("1e3", flat + [(0.1, [(10, 0.7), (20, 0.78), (30, 0.80)])], 30)
    peaked = record("1e5", flat + [(0.1, [(10, 0.95), (20, 0.97), (30, 0.96)])], 20)
    one_score = record("1e4", flat + [(0.1, [(30, 0.9)])], 30)
    creeping = record("1e6", flat + [(0.1, [(10, 0.98), (20, 0.9849), (30, 0.9865)])], 30)  # 0.00016 / epoch
    gap = record("1e7", flat + [(0.1, [(10, 0.7), (20, None), (30, 0.8)])], 30)  # an unscored epoch in between
    rows = {t["dose"]: t for t in map(report.lsqml_tuning, (rising, peaked, one_score, creeping, gap))}
    assert rows["1e3"]["still_rising_at_cap"] and rows["1e3"]["gain_per_epoch"] == pytest.approx(0.002)
    assert rows["1e3"]["ms_ssim_phase"] == 0.80 and rows["1e3"]["tv_weight"] == 0.1  # the chosen point's, not the first's
    assert not rows["1e5"]["still_rising_at_cap"] and rows["1e5"]["epochs"] == 20
    assert not rows["1e4"]["still_rising_at_cap"] and rows["1e4"]["gain_per_epoch"] is None  # one score: no trend
    assert not rows["1e6"]["still_rising_at_cap"] and rows["1e6"]["gain_per_epoch"] == pytest.approx(0.00016)
    assert rows["1e7"]["still_rising_at_cap"] and rows["1e7"]["gain_per_epoch"] == pytest.approx(0.005)  # over 20
    assert summarise([_job("wide", 0.7, "1e3", (0.7, 0.7, 0.5, 0.8))], [], [rising])["lsqml_tuning"] == [rows["1e3"]]
    md = "\n".join(report._tuning_markdown(list(rows.values())))
    assert "| wide | 1e3 | gaussian | 0.100 | 1.000 | 30 (30) | 0.8000 | +0.00200 | **still rising** |" in md
    assert "| wide | 1e5 | gaussian | 0.100 | 1.000 | 20 (30) | 0.9700 | -0.00100 | below it: the score peaked earlier |" in md
    assert "| wide | 1e4 | gaussian | 0.100 | 1.000 | 30 (30) | 0.9000 | — | — |" in md
    assert "| wide | 1e6 | gaussian | 0.100 | 1.000 | 30 (30) | 0.9865 | +0.00016 | flat |" in md
    note = "".join(report._unconverged_note(list(rows.values())))
    assert "while still improving on the training split at wide@1e3, wide@1e7 (" in note
    assert report._unconverged_note([rows["1e5"], rows["1e4"], rows["1e6"]]) == []
    # the targets' cells at that dose say so too
    narrow_1e3 = record("1e3", flat + [(0.1, [(10, 0.7), (20, 0.8), (30, 0.8)])], 20, view="narrow")  # peaked
    summary = summarise([_job("wide", 0.7, "1e3", (0.7, 0.7, 0.5, 0.8)), _job("wide", 0.7, "1e5", (0.9, 0.9, 0.5, 0.95)),
                         _job("narrow", 0.2, "1e3", (0.3, 0.3, 0.2, 0.4))], [], [rising, peaked, narrow_1e3])
    early = {(r["view"], r["dose"]): r["ptychi_stopped_early"] for r in summary["targets"]["ratios"]}
    assert early == {("wide", "1e3"): True, ("wide", "1e5"): False, ("narrow", "1e3"): False}
    assert [r["ptychi_stopped_early"] for r in summary["targets"]["best_plain"]] == [True, False]
    md = "\n".join(report._targets_markdown(summary["targets"]))
    assert "| wide | 1e3 | PtychoPINN | — / — | 0.8750 (LSQML stopped early) | ≥ 0.95 | **missed** |" in md
    assert "| wide | 1e5 | PtychoPINN | — / — | 0.9474 | ≥ 0.95 | **missed** |" in md
    assert "| wide | 1e3 | PtychoPINN | 0.8750 (LSQML stopped early) |" in md
    assert "(target ≥ 1.0×: **missed**, LSQML stopped early)." in md
    for broken, message in (({**rising, "chosen": {**rising["chosen"], "tv_weight": 0.3}}, "not in its grid"),
                            ({k: v for k, v in rising.items() if k != "max_epochs"}, "no 'max_epochs'")):
        with pytest.raises(ContractError, match=f"of wide@1e3: .*{message}.*tune@1e3-wide"):
            report.lsqml_tuning(broken)
    with pytest.raises(ContractError, match="no view .*tune@1e3-<view>"):  # a record from before 2026-12-01
        report.lsqml_tuning({k: v for k, v in rising.items() if k != "view"})


def test_the_report_reads_each_views_tuning_from_its_own_path(tmp_path):
    """load_tunings: view by view, as the tables list them; a record whose dose or view is not its
    path's, or that has no view (written before each view was tuned on its own), is refused by path."""
    from fly64study.contract import ContractError

    def put(at_dose, at_view, **record):
        path = tmp_path / f"dose_{at_dose}" / at_view / "lsqml_tuning.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        return path

    for d in ("1e3", "1e5"):
        for v in ("dense", "sparse"):
            put(d, v, dose=d, view=v)
    got = report.load_tunings(tmp_path, ["1e3", "1e5"], ["dense", "sparse"])
    assert [(r["view"], r["dose"]) for r in got] == [("dense", "1e3"), ("dense", "1e5"), ("sparse", "1e3"), ("sparse", "1e5")]
    put("1e5", "sparse", dose="1e5", view="dense")  # dense's record copied into sparse's place
    with pytest.raises(ContractError, match=r"sparse/lsqml_tuning.json: the tuning of dense@1e5, not sparse@1e5; "
                                            r"run `dvc repro tune@1e5-sparse`"):
        report.load_tunings(tmp_path, ["1e3", "1e5"], ["dense", "sparse"])
    put("1e5", "sparse", dose="1e5")
    with pytest.raises(ContractError, match="sparse/lsqml_tuning.json: no view .*tune@1e5-sparse"):
        report.load_tunings(tmp_path, ["1e3", "1e5"], ["dense", "sparse"])
