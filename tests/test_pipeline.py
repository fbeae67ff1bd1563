"""The real DVC pipeline on the tiny profile, in a temporary git repository (a copy of the project)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from fly64study.contract import load_dataset
from fly64study.files import sha256_file

pytestmark = pytest.mark.pipeline

COPY = ["dvc.yaml", "profiles", "stages", "src", "inputs", "Makefile", ".dvcignore", ".gitignore", ".dvc/config",
        ".dvc/.gitignore"]


def _env(root: Path) -> dict:
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(root / "src"),  # the copy's package, not the checkout's
        DVC_NO_ANALYTICS="1",
        DVC_STUDIO_OFFLINE="1",
        DVC_SITE_CACHE_DIR=str(root / ".site_cache"),
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.org",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.org",
    )
    return env


def sh(root: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def ran(proc: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", proc.stdout + proc.stderr))


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "study"
    for rel in COPY:
        src = REPO / rel
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    shutil.copy2(root / "profiles" / "tiny.yaml", root / "params.yaml")
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "tiny profile")
    return root


def _edit(root: Path, old: str, new: str) -> None:
    params = root / "params.yaml"
    text = params.read_text()
    assert text.count(old) == 1, old
    params.write_text(text.replace(old, new))


DOSES, VIEWS = ("1e3", "1e4", "1e5"), ("baseline", "dense", "sparse")
STAGES = {"design", *(f"generate@{d}" for d in DOSES), *(f"overlap@{d}-{v}" for d in DOSES for v in VIEWS),
          *(f"train@{d}-{v}" for d in DOSES for v in VIEWS)}


def test_repro_caches_and_reruns_only_what_changed(project):
    first = sh(project, "dvc", "repro")
    assert ran(first) == STAGES
    for d in ("1e3", "1e4", "1e5"):
        for part in ("train", "test"):
            ds = load_dataset(project / f"data/phase_c/dose_{d}/patched_{part}.npz")
            assert ds.metadata["dose_label"] == d
            for v in ("dense", "sparse"):
                view = load_dataset(project / f"data/phase_d/dose_{d}/{v}/{part}.npz")
                assert view.metadata["transformations"][-1]["view"] == v
            # the baseline view keeps every position: phase C's split, byte for byte
            assert (project / f"data/phase_d/dose_{d}/baseline/{part}.npz").read_bytes() == \
                (project / f"data/phase_c/dose_{d}/patched_{part}.npz").read_bytes()
        for v, g in (("baseline", 1), ("dense", 2), ("sparse", 2)):
            manifest = json.loads((project / f"data/phase_e/runs/{d}-{v}/training_manifest.json").read_text())
            (job,) = manifest["jobs"]
            assert job["bundle_path"] == f"dose_{d}/{v}/gs{g}/wts.h5.zip"
            assert job["sha256"] == sha256_file(project / "data/phase_e" / job["bundle_path"])
        assert (project / f"data/phase_c/dose_{d}/overview.png").stat().st_size > 10_000
    design = json.loads((project / "data/design.json").read_text())
    assert design["dose_list"] == [1e3, 1e4, 1e5]

    metrics = json.loads(sh(project, "dvc", "metrics", "show", "--json").stdout)
    shown = next(iter(metrics.values()))["data"]
    assert "data/phase_d/dose_1e3/sparse/metrics.json" in shown
    evaluation = shown["data/phase_e/runs/1e5-dense/eval_1e5_dense.json"]["data"]
    assert evaluation["phase_rmse_rad"] > 0 and evaluation["flat_phase_rmse_rad"] > 0
    dense = shown["data/phase_d/dose_1e3/dense/metrics.json"]["data"]
    sparse = shown["data/phase_d/dose_1e3/sparse/metrics.json"]["data"]
    assert dense["train"]["kept"] > sparse["train"]["kept"]

    again = sh(project, "dvc", "repro")
    assert ran(again) == set()
    assert "Data and pipelines are up to date" in again.stdout
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "first run")

    _edit(project, '"1e4": 10000.0', '"1e4": 12000.0')
    diff = json.loads(sh(project, "dvc", "params", "diff", "--json").stdout)
    change = diff["params.yaml"]["design.doses.1e4"]
    assert (change["old"], change["new"]) == (10000.0, 12000.0)
    one_dose = sh(project, "dvc", "repro")
    assert ran(one_dose) == {"design", "generate@1e4", *(f"{s}@1e4-{v}" for s in ("overlap", "train") for v in VIEWS)}
    assert load_dataset(project / "data/phase_c/dose_1e4/patched_test.npz").metadata["nphotons"] == 12000.0

    _edit(project, "sparse: 0.2", "sparse: 0.3")
    one_view = sh(project, "dvc", "repro")
    assert ran(one_view) == {"design", *(f"{s}@{d}-sparse" for s in ("overlap", "train") for d in DOSES)}
    spacing = json.loads((project / "data/phase_d/dose_1e3/sparse/metrics.json").read_text())["spacing_px"]
    assert spacing == pytest.approx(0.7 * json.loads(
        (project / "data/phase_d/dose_1e3/dense/metrics.json").read_text())["probe_diameter_px"])


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
    sh(project, "make", "--no-print-directory", "profile", "PROFILE=full")
    diff = json.loads(sh(project, "dvc", "params", "diff", "--json").stdout)["params.yaml"]
    assert (diff["design.N"]["old"], diff["design.N"]["new"]) == (32, 128)
    assert (diff["generate.n_positions"]["old"], diff["generate.n_positions"]["new"]) == (300, 10000)
    wrong = sh(project, "make", "--no-print-directory", "profile", "PROFILE=huge", check=False)
    assert wrong.returncode != 0 and "no profile 'huge'" in wrong.stdout
