"""dvc.yaml lists, for each stage, its script and exactly the package modules that script imports."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PACKAGE = REPO / "src" / "fly64study"


def _imports(path: Path) -> set[str]:
    """fly64study modules imported by a file (``from fly64study import x`` and ``from fly64study.x import y``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fly64study":
            if node.module == "fly64study":
                found |= {a.name for a in node.names if (PACKAGE / f"{a.name}.py").exists()}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("fly64study.")}
    return found


def _closure(script: Path) -> set[str]:
    todo, seen = list(_imports(script)), set()
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo.extend(_imports(PACKAGE / f"{mod}.py"))
    return seen


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_script_and_every_imported_module(name):
    stage = STAGES[name]
    script = re.search(r"python (stages/\w+\.py)", stage["cmd"]).group(1)
    deps = set(stage["deps"])
    assert script in deps
    expected = {f"src/fly64study/{m}.py" for m in _closure(REPO / script)} | {"src/fly64study/__init__.py"}
    listed = {d for d in deps if d.startswith("src/")}
    assert listed == expected, f"missing: {sorted(expected - listed)}, not imported: {sorted(listed - expected)}"


def test_no_package_module_imports_a_stage():
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.split(".")[0] == "stages" for n in names), path


def test_physics_imports_nothing_of_ours_but_contract():
    assert _imports(PACKAGE / "physics.py") <= {"contract"}


def test_dvc_is_configured_offline():
    config = (REPO / ".dvc" / "config").read_text()
    assert "analytics = false" in config and "check_update = false" in config


def test_every_uncached_output_is_kept_by_git():
    """A `cache: false` output is in neither the DVC cache nor a remote: git must keep it, or a
    fresh clone misses it and reruns its stage. And only metrics and plots may be `cache: false`:
    DVC keeps no run-cache entry for a stage with any other uncached output, so a fan-out
    collector or a queued experiment would run that stage again (tune@ and compare@ did)."""
    import subprocess

    uncached = []
    for name, stage in STAGES.items():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                if isinstance(out, dict):
                    (path, opts), = out.items()
                    if opts and opts.get("cache") is False:
                        assert kind != "outs", f"{name}: {path} is a cache: false output outside metrics/plots"
                        uncached.append(re.sub(r"\$\{[^}]+\}", "x", path))
    assert uncached
    proc = subprocess.run(["git", "check-ignore", "--no-index", *uncached], cwd=REPO, capture_output=True, text=True)
    assert proc.stdout == "", f"git ignores these cache: false outputs: {proc.stdout}"


def test_each_view_is_tuned_on_its_own_training_split_and_read_by_its_own_stages():
    """tune@<dose>-<view> reads that view's training split and never a test split; reconstruct@ and
    hybrid@ read their own view's choice. (The tiny profile compares one view, so a path with the
    view written in would pass every pipeline test: this checks the declaration itself.)"""
    tune = STAGES["tune"]
    assert set(tune["matrix"]) == {"dose", "view"}
    data = [d for d in tune["deps"] if d.startswith("data/")]
    assert data == ["data/phase_d/dose_${item.dose}/${item.view}/train.npz"]
    assert "--view ${item.view}" in tune["cmd"] and "test.npz" not in tune["cmd"]
    choice = "data/phase_f/tune/dose_${item.dose}/${item.view}/lsqml_tuning.json"
    assert tune["outs"] == [choice]
    for name in ("reconstruct", "hybrid"):
        assert f"--tuning {choice}" in " ".join(STAGES[name]["cmd"].split()), name
        assert choice in STAGES[name]["deps"], name


def test_the_old_single_view_tuning_files_are_ignored_and_the_new_ones_are_not():
    """tune@<dose> wrote dose_<d>/lsqml_tuning.json until 2026-12-01; a workspace that ran it keeps
    the file (DVC leaves a removed stage's outputs), which must not change the report's data/phase_f
    hash, while every tune@<dose>-<view> file must still count."""
    import subprocess
    import sys

    old, new = "data/phase_f/tune/dose_1e3/lsqml_tuning.json", "data/phase_f/tune/dose_1e3/sparse/lsqml_tuning.json"
    dvc = [sys.executable, "-m", "dvc", "check-ignore"]
    assert subprocess.run([*dvc, old], cwd=REPO, capture_output=True).returncode == 0  # 0: ignored
    assert subprocess.run([*dvc, new], cwd=REPO, capture_output=True).returncode == 1
