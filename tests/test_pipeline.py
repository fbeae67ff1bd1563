"""The real DVC pipeline on the tiny profile, in a temporary git repository (a copy of the project)."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, clone_run, copy_project, sh
from fly64study.contract import load_dataset
from fly64study.files import sha256_file
from fly64study.models import NAMES, STEMS

pytestmark = pytest.mark.pipeline


def ran_log(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


def ran(proc: subprocess.CompletedProcess) -> set[str]:
    return ran_log(proc.stdout + proc.stderr)


@pytest.fixture
def project(tmp_path) -> Path:
    return copy_project(tmp_path / "study")


def _edit(root: Path, old: str, new: str) -> None:
    params = root / "params.yaml"
    text = params.read_text()
    assert text.count(old) == 1, old
    params.write_text(text.replace(old, new))


# the tiny profile: every view is built, the sparse one is not trained (the full study trains and compares it)
DOSES, VIEWS, JOBS, COMPARED = ("1e3", "1e5"), ("baseline", "dense", "sparse"), ("baseline", "dense"), ("dense",)
MODELS = NAMES  # the tiny profile refines and starts LSQML from both networks: every model of the table
STAGES = {"design", *(f"generate@{d}" for d in DOSES), *(f"tune@{d}-{v}" for d in DOSES for v in COMPARED),
          *(f"overlap@{d}-{v}" for d in DOSES for v in VIEWS), *(f"train@{d}-{j}" for d in DOSES for j in JOBS),
          *(f"train_ptychopinn@{d}-{v}" for d in DOSES for v in COMPARED),
          *(f"{s}@{d}-{v}" for s in ("reconstruct", "refine", "hybrid", "compare") for d in DOSES for v in COMPARED),
          "report"}


def check_report(root: Path) -> None:
    """The report holds a number for every (dose, compared view, model) and its files exist."""
    summary = json.loads((root / "data/report/metrics_summary.json").read_text())
    assert {(c["dose"], c["view"]) for c in summary["jobs"]} == {(d, v) for d in DOSES for v in COMPARED}
    for c in summary["jobs"]:
        assert c["photons_per_pixel_mean"] > 0 and c["shot_noise_phase_bound_rad"] > 0
        for m in MODELS:
            s = c["models"][m]
            assert s["status"] == "completed", (c["dose"], c["view"], m, s)
            for key in ("ms_ssim_phase", "ms_ssim_amplitude", "mae_phase", "mae_amplitude",
                        "frc_resolution_phase", "fixed_frame_ms_ssim_phase", "frc_low_frequency_phase"):
                assert isinstance(s[key], float) and s[key] == s[key], (c["dose"], c["view"], m, key)
            assert -1 <= s["ms_ssim_phase"] <= 1
    assert {(r["dose"], r["view"]) for r in summary["ptychi_runs"]} == {(d, v) for d in DOSES for v in COMPARED}
    assert not summary["failed"]
    report = (root / "data/report/metrics_summary.md").read_text()
    assert report.index("## Findings") < report.index("## Against the study's targets") < report.index("## Appendix")
    per_job = report.split("## Appendix: every job, every metric")[1]
    assert per_job.count("| LSQML |") == len(DOSES) * len(COMPARED) and "—" not in per_job
    for png in ("ms_ssim_vs_dose.png", "frc_and_phase_error_vs_fluence.png"):
        assert (root / "data/report" / png).stat().st_size > 20_000
    for v in COMPARED:
        rows = (root / f"data/report/plots/ms_ssim_phase_{v}.csv").read_text().splitlines()
        assert rows[0] == ",".join(["nphotons", "photons_per_pixel", *MODELS, *(f"{m}_sd" for m in MODELS)]
                                   ) and len(rows) == 1 + len(DOSES)
        # a number for every model; no sd with one training seed (and never for LSQML's one run)
        assert all(r.split(",")[:2 + len(MODELS)].count("") == 0 and r.endswith("," * len(MODELS)) for r in rows[1:])
        with open(root / f"data/phase_g/dose_1e3/{v}/comparison_metrics.csv") as fh:
            assert {r["model"] for r in csv.DictReader(fh)} == set(MODELS)


def _dose_of(stage: str) -> str | None:
    return stage.split("@")[1].split("-")[0] if "@" in stage else None


def test_a_study_fanned_out_over_three_clones_is_restored_not_rerun_and_equals_one_machines(tiny_pipeline, tmp_path):
    """The shared run is a fan-out (tests/conftest.py): a clone per dose ran its share and pushed it
    with the run-cache to one remote; the collector fetched the run-cache and ran `dvc repro --pull`.
    Each share ran its dose's stages and nothing else; the collector ran none of them again and
    ran only the two stages of no dose (design, report); and what it holds is what one machine's `dvc repro` made, byte for byte
    (tests/golden/tiny_sha256.txt, written by `make golden` from a single-machine run)."""
    from test_reproducible import first_difference, output_digests, read_golden

    assert set(tiny_pipeline.shares) == set(DOSES)
    for dose, out in tiny_pipeline.shares.items():
        assert ran_log(out) == {s for s in STAGES if _dose_of(s) == dose}, out
        assert re.search(r"run-cache: \d+ entries pushed", out)
    log = tiny_pipeline.log
    restored = set(re.findall(r"Stage '([^']+)' is cached - skipping run", log))
    # design and report belong to no dose: the collector runs them (a few seconds each)
    assert restored == STAGES - {"design", "report"}, log
    assert ran_log(log) == {"design", "report"}
    digests = output_digests(tiny_pipeline.root)
    assert any(p.startswith("data/report/") for p in digests)
    assert first_difference(read_golden(), digests) is None, first_difference(read_golden(), digests)
    # a colleague's clone of the collector's commit gets every result from the remote (`make pull`)
    colleague = tmp_path / "colleague"
    sh(tmp_path, "git", "clone", "-q", str(tiny_pipeline.root), str(colleague))
    sh(colleague, "dvc", "remote", "add", "--local", "-d", "team", str(tiny_pipeline.remote))
    sh(colleague, "dvc", "pull", "--run-cache")
    assert output_digests(colleague) == digests
    assert stale(colleague) == set()


def test_repro_caches_and_reruns_only_what_changed(tiny_pipeline, tmp_path):
    project = tiny_pipeline.root
    for d in DOSES:
        for part in ("train", "test"):
            ds = load_dataset(project / f"data/phase_c/dose_{d}/patched_{part}.npz")
            assert ds.metadata["dose_label"] == d
            for v in ("dense", "sparse"):
                view = load_dataset(project / f"data/phase_d/dose_{d}/{v}/{part}.npz")
                assert view.metadata["transformations"][-1]["view"] == v
            # the baseline view keeps every position: phase C's split, byte for byte
            assert (project / f"data/phase_d/dose_{d}/baseline/{part}.npz").read_bytes() == \
                (project / f"data/phase_c/dose_{d}/patched_{part}.npz").read_bytes()
        for v, g in (("baseline", 1), ("dense", 2)):
            manifest = json.loads((project / f"data/phase_e/runs/{d}-{v}/training_manifest.json").read_text())
            (job,) = manifest["jobs"]
            assert job["bundle_path"] == f"dose_{d}/{v}/gs{g}/wts.h5.zip" and job["seed"] == 7
            assert job["sha256"] == sha256_file(project / "data/phase_e" / job["bundle_path"])
        assert (project / f"data/phase_c/dose_{d}/overview.png").stat().st_size > 10_000
    design = json.loads((project / "data/design.json").read_text())
    assert design["dose_list"] == [1e3, 1e5]
    check_report(project)

    # DVC commands run in a copy: the shared run is read by another pytest-xdist worker meanwhile
    project = clone_run(tiny_pipeline, tmp_path / "study")
    metrics = json.loads(sh(project, "dvc", "metrics", "show", "--json").stdout)
    shown = next(iter(metrics.values()))["data"]
    assert "data/phase_d/dose_1e3/sparse/metrics.json" in shown
    evaluation = shown["data/phase_e/runs/1e5-dense/eval_1e5_dense.json"]["data"]
    assert evaluation["seed_7"]["phase_rmse_rad"] > 0 and evaluation["seed_7"]["flat_phase_rmse_rad"] > 0
    comparison = shown["data/phase_g/dose_1e5/dense/metrics.json"]["data"]
    assert set(comparison) == set(MODELS) and 0 < comparison["LSQML"]["ms_ssim_phase"] <= 1
    # what a person compares: numbers only (no labels, flags or notes), one table a screen can hold
    leaves = [v for f in shown.values() for v in _leaves(f["data"])]
    assert leaves and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in leaves)
    header = sh(project, "dvc", "metrics", "show").stdout.splitlines()[0].split()
    assert header[0] == "Path" and len(header) <= 60, f"{len(header)} columns: {header}"
    dense = shown["data/phase_d/dose_1e3/dense/metrics.json"]["data"]
    sparse = shown["data/phase_d/dose_1e3/sparse/metrics.json"]["data"]
    assert dense["train"]["kept"] > sparse["train"]["kept"]

    again = sh(project, "dvc", "repro")
    assert ran(again) == set()
    assert "Data and pipelines are up to date" in again.stdout

    # A change reruns only what it touches. `dvc status` names the stages whose own inputs changed;
    # running those alone (a few seconds each, not the many stages downstream) moves the change one
    # step on, and `dvc status` shows exactly which stages it reaches next.
    _edit(project, '"1e5": 100000.0', '"1e5": 120000.0')
    diff = json.loads(sh(project, "dvc", "params", "diff", "--json").stdout)
    change = diff["params.yaml"]["design.doses.1e5"]
    assert (change["old"], change["new"]) == (100000.0, 120000.0)
    # design records the whole design, report and the 1e5 trainings read the dose value itself
    # (refinements too: they write the dose into their bundles)
    refines = {f"refine@1e5-{v}" for v in COMPARED} | {f"train_ptychopinn@1e5-{v}" for v in COMPARED}
    assert stale(project) == {"design", "report", "generate@1e5", *(f"train@1e5-{j}" for j in JOBS), *refines}
    sh(project, "dvc", "repro", "-s", "generate@1e5")
    assert load_dataset(project / "data/phase_c/dose_1e5/patched_test.npz").metadata["nphotons"] == 120000.0
    assert stale(project) == {"design", "report", *(f"overlap@1e5-{v}" for v in VIEWS),
                              *(f"train@1e5-{j}" for j in JOBS), *refines}

    sh(project, "git", "checkout", "-q", "--", "params.yaml", "dvc.lock")
    sh(project, "dvc", "checkout", "-q")  # back to the committed run
    assert stale(project) == set()
    _edit(project, "dense: 0.7", "dense: 0.6")
    assert stale(project) == {"design", *(f"overlap@{d}-dense" for d in DOSES)}  # report: compare.views only
    one_view = sh(project, "dvc", "repro", "-s", "overlap@1e3-dense")
    assert ran(one_view) == {"overlap@1e3-dense"}
    assert stale(project) == {"design", "overlap@1e5-dense", "tune@1e3-dense",  # it reads the dense training split
                              *(f"{s}@1e3-dense" for s in ("train", "train_ptychopinn", "reconstruct", "refine",
                                                           "hybrid", "compare"))}
    spacing = json.loads((project / "data/phase_d/dose_1e3/dense/metrics.json").read_text())["spacing_px"]
    assert spacing == pytest.approx(0.4 * json.loads(
        (project / "data/phase_d/dose_1e3/sparse/metrics.json").read_text())["probe_diameter_px"])


def _leaves(node: dict) -> list:
    return [x for v in node.values() for x in (_leaves(v) if isinstance(v, dict) else [v])]


def stale(root: Path) -> set[str]:
    """Stages `dvc status` reports as changed (params, deps or outs)."""
    return set(json.loads(sh(root, "dvc", "status", "--json").stdout))


def test_committed_metrics_are_readable_in_a_fresh_clone_without_cache(tiny_pipeline, tmp_path):
    """Metrics and plot tables are `cache: false`: git holds them, so a clone with no DVC cache
    and no remote shows the committed values (`dvc metrics show`, `dvc metrics diff`)."""
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(tiny_pipeline.root), str(clone))
    assert not (clone / ".dvc" / "cache").exists()
    shown = json.loads(sh(clone, "dvc", "metrics", "show", "--json").stdout)
    data = next(iter(shown.values()))["data"]
    path = "data/phase_g/dose_1e3/dense/metrics.json"
    assert data[path]["data"] == json.loads((tiny_pipeline.root / path).read_text())
    assert "data/phase_d/dose_1e3/dense/metrics.json" in data and "data/phase_e/runs/1e3-dense/eval_1e3_dense.json" in data
    # a later commit that changes a value: `dvc metrics diff HEAD~1` shows old and new, still without a cache
    changed = json.loads((clone / path).read_text())
    old = changed["LSQML"]["ms_ssim_phase"]
    changed["LSQML"]["ms_ssim_phase"] = old + 0.5
    (clone / path).write_text(json.dumps(changed))
    sh(clone, "git", "commit", "-qam", "a changed metric")
    diff = json.loads(sh(clone, "dvc", "metrics", "diff", "HEAD~1", "--json").stdout)
    entry = diff[path]["LSQML.ms_ssim_phase"]
    assert (entry["old"], entry["new"]) == (old, old + 0.5)
    assert (clone / "data/report/plots/ms_ssim_phase_dense.csv").is_file()


@pytest.mark.parametrize("old,new,message", [
    ("neighbor_count: 7", "neighbor_count: 3", "design.neighbor_count: K=3 is smaller than C"),
    ("sparse: 0.2", "sparse: 1.5", "design.views.sparse: overlap fraction 1.5 is outside [0, 1)"),
    ('"1e3": 1000.0', '"1e3": -1000.0', "design.doses.1e3: dose -1000.0 must be a positive"),
])
def test_invalid_design_fails_repro_naming_the_field(project, old, new, message):
    _edit(project, old, new)
    proc = sh(project, "dvc", "repro", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_profile_switch_is_one_command_and_params_diff_shows_it(project):
    make = ("make", "--no-print-directory", "-o", ".venv/.installed", "PY=python", "profile")
    sh(project, *make, "PROFILE=full")
    diff = json.loads(sh(project, "dvc", "params", "diff", "--json").stdout)["params.yaml"]
    assert (diff["design.N"]["old"], diff["design.N"]["new"]) == (32, 128)
    assert (diff["generate.n_positions"]["old"], diff["generate.n_positions"]["new"]) == (300, 10000)
    wrong = sh(project, *make, "PROFILE=huge", check=False)
    assert wrong.returncode != 0 and "no profile 'huge'" in wrong.stderr and "Traceback" not in wrong.stderr
    sh(project, *make, "PROFILE=tiny")  # and back: the file the run was made with, byte for byte
    assert sh(project, "git", "status", "--porcelain", "params.yaml").stdout == ""


def test_every_reconstruction_opens_in_ptychodus_as_the_compared_field(tiny_pipeline):
    """compare@ exports each model's stitched field as a Ptychodus product: read back with
    Ptychodus's own reader, it is the field phase G scored (LSQML: phase F's object), with the
    test split's positions in metres and a loss history."""
    import numpy as np
    from ptychodus.api.io import load_product

    from fly64study.iterative import load_result
    from fly64study.products import positions_m
    from fly64study.train import read_loss_column

    root = tiny_pipeline.root / "data"
    for view_dir in sorted((root / "phase_g").glob("dose_*/*")):
        dose, view = view_dir.parent.name[5:], view_dir.name
        names = sorted(p.name for p in (view_dir / "products").iterdir())
        assert {f"{stem}.h5" for stem in STEMS.values()} <= set(names), names  # every model of the table
        test = load_dataset(root / "phase_d" / f"dose_{dose}" / view / "test.npz")
        dx = test.metadata["source"]["geometry"]["pixel_size_m"]
        rec = load_result(root / "phase_f" / f"dose_{dose}" / view / "ptychi_reconstruction.npz")
        for name in names:
            product = load_product(view_dir / "products" / name)
            obj = product.object_.get_array()[0]
            assert obj.shape == test.objectGuess.shape and np.isfinite(obj).all()
            np.testing.assert_allclose(product.probe_positions.get_coordinates_x_m(),
                                       positions_m(test.xcoords, obj.shape[1], dx))
            assert product.object_.get_pixel_geometry().width_m == dx
            assert len(product.losses) >= 1
            losses = [(loss.epoch, loss.value) for loss in product.losses]
            if name == "ptychi_lsqml.h5":
                np.testing.assert_array_equal(obj, rec.object)
                assert [v for _, v in losses] == pytest.approx(list(rec.cost))
            if name == "ptychopinn_lsqml.h5":  # hybrid@'s object: LSQML from the network's field
                hybrid = root / "hybrid" / f"dose_{dose}" / view
                first = json.loads((hybrid / "hybrid_manifest.json").read_text())["jobs"][0]
                assert first["network"] == "ptychopinn"
                started = load_result(hybrid / "ptychopinn" / f"seed_{first['seed']}" / "ptychi_reconstruction.npz")
                np.testing.assert_array_equal(obj, started.object)
                assert started.settings["object_init"] == "the PINN's stitched test field"
                assert [v for _, v in losses] == pytest.approx(list(started.cost))
            for stem, trained in (("bp_unet.h5", "phase_e"), ("ptychopinn.h5", "ptychopinn")):
                if name == stem:  # the training's validation loss, epoch by epoch
                    table = root / trained / "runs" / f"{dose}-{view}" / f"losses_{dose}_{view}.csv"
                    assert losses == list(read_loss_column(table, "val_loss"))
            if name == "bp_unet_refine.h5":  # refine@'s table holds both networks' columns (tiny: ptychopinn's plain)
                table = root / "refine" / "runs" / f"{dose}-{view}" / f"losses_{dose}_{view}.csv"
                assert losses == list(read_loss_column(table, "val_loss_bp_unet"))


def test_a_queued_sweep_runs_each_point_and_exp_show_lists_its_metrics(tiny_pipeline, tmp_path):
    """`make sweep` (python -m fly64study.sweeps): one queued DVC experiment per value, run two at a
    time by `dvc queue start -j 2`, limited here to one stage; `dvc exp show` lists each point's
    params and metrics. A value the params rules reject stops the sweep before anything is queued."""
    project = clone_run(tiny_pipeline, tmp_path / "study")
    sweep = (sys.executable, "-m", "fly64study.sweeps", "design.views.sparse")
    bad = sh(project, *sweep, "0.3", "1.5", check=False)
    assert bad.returncode == 2 and "design.views.sparse=1.5" in bad.stderr and "outside [0, 1)" in bad.stderr
    unknown = sh(project, sys.executable, "-m", "fly64study.sweeps", "design.views.spares", "0.3", check=False)
    assert unknown.returncode == 2 and "design.views.spares: no such key" in unknown.stderr
    assert "Queued" not in sh(project, "dvc", "queue", "status").stdout

    out = sh(project, *sweep, "0.3", "0.4", "--jobs", "2", "--target", "overlap@1e3-sparse").stdout
    assert "| design.views.sparse" in out.replace("  ", " ")  # the table printed at the end
    shown = json.loads(sh(project, "dvc", "exp", "show", "--json").stdout)
    points = {}
    for rev in shown:
        for exp in rev.get("experiments") or []:
            data = exp["revs"][0]["data"]
            fraction = data["params"]["params.yaml"]["data"]["design"]["views"]["sparse"]
            points[fraction] = data["metrics"]["data/phase_d/dose_1e3/sparse/metrics.json"]["data"]
    assert set(points) == {0.3, 0.4}
    base = json.loads((project / "data/phase_d/dose_1e3/sparse/metrics.json").read_text())
    # more overlap, closer positions, more of them kept: each point ran with its own value
    assert base["spacing_px"] > points[0.3]["spacing_px"] > points[0.4]["spacing_px"]
    assert base["train"]["kept"] <= points[0.3]["train"]["kept"] <= points[0.4]["train"]["kept"]
    assert sh(project, "git", "status", "--porcelain").stdout == ""  # the workspace is untouched


def test_sharing_and_its_make_targets_refuse_what_they_cannot_do(project):
    """Bad requests stop before any stage runs, naming the fix: a dose not in design.doses, a dose
    for push, a remote for gather (`dvc repro --pull` has no remote option); `make share` without
    DOSES stops before the setup it would start."""
    sharing = (sys.executable, "-m", "fly64study.sharing")
    bad = sh(project, *sharing, "share", "--dose", "1e4", check=False)
    assert bad.returncode == 2 and "--dose 1e4: not a dose of design.doses; choose from ['1e3', '1e5']" in bad.stderr
    assert sh(project, *sharing, "push", "--dose", "1e3", check=False).returncode == 2
    gather = sh(project, *sharing, "gather", "--remote", "team", check=False)
    assert gather.returncode == 2 and "dvc remote default --local" in gather.stderr
    assert not (project / "data").exists()
    make = sh(project, "make", "--no-print-directory", "share", check=False)
    assert make.returncode != 0 and "give DOSES=" in make.stderr and not (project / ".venv").exists()
    (project / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())  # what setup needs
    dry = sh(project, "make", "--no-print-directory", "-n", "share", "DOSES=1e3 1e5", "REMOTE=team")
    assert "-m fly64study.sharing share --dose 1e3 --dose 1e5 --remote team" in dry.stdout
