"""Each stage's `params:` in dvc.yaml lists exactly the params keys its code reads.

The shared tiny run records, per stage process, every key read after validation
(``FLY64STUDY_PARAMS_RECORD``, :mod:`fly64study.design`). A key read but not listed makes DVC
call stale results up to date (``train.thinning`` did); a listed key no code reads reruns
stages for nothing (``design.metrics.components`` did, while compare hard-coded it).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import profile_params
from fly64study.design import _Keyed, _Section, params_from_dict, read_params

pytestmark = pytest.mark.pipeline


def _leaves(raw: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in raw.items():
        path = f"{prefix}{key}"
        out |= _leaves(value, f"{path}.") if isinstance(value, dict) and value else {path}
    return out


def _covers(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer + ".")


def stage_reads(root: Path, reads: Path) -> dict[str, set[str]]:
    """stage name -> params keys its process read, matched through dvc.lock's commands."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    by_cmd = {" ".join(s["cmd"].split()): name for name, s in lock.items()}
    out: dict[str, set[str]] = {}
    for record in reads.glob("*.json"):
        rec = json.loads(record.read_text())
        cmd = " ".join(["python", *rec["argv"]])
        if cmd in by_cmd:
            out.setdefault(by_cmd[cmd], set()).update(rec["keys"])
    return out


def check_declared(root: Path, reads: Path) -> list[str]:
    """Every problem found: undeclared reads and over-broad listings, per stage."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    leaves = _leaves(read_params(root / "params.yaml"))
    read = stage_reads(root, reads)
    problems = []
    for name, stage in lock.items():
        declared = set(stage.get("params", {}).get("params.yaml", {}))
        got = read.get(name)
        if got is None:
            problems.append(f"{name}: no record of its params reads (did the stage run?)")
            continue
        for key in sorted(got):
            if not any(_covers(d, key) for d in declared):
                problems.append(f"{name}: reads {key} but dvc.yaml does not list it")
        for d in sorted(declared):
            unused = [leaf for leaf in leaves if _covers(d, leaf) and not any(
                _covers(r, leaf) or _covers(leaf, r) for r in got)]
            if unused:
                problems.append(f"{name}: lists {d} but never reads {sorted(unused)}")
    return problems


def test_every_stage_lists_exactly_the_params_it_reads(tiny_pipeline):
    problems = check_declared(tiny_pipeline.root, tiny_pipeline.reads)
    assert not problems, "\n".join(problems)


def test_the_check_catches_an_undeclared_and_an_over_broad_key(tiny_pipeline, tmp_path):
    """The check itself can fail: drop train.thinning from a train stage's listing, and widen
    a compare stage's listing to a whole section, in a copy of the lock."""
    lock = yaml.safe_load((tiny_pipeline.root / "dvc.lock").read_text())
    lock["stages"]["train@1e3-dense"]["params"]["params.yaml"].pop("train.thinning")
    lock["stages"]["compare@1e3-dense"]["params"]["params.yaml"]["generate"] = {}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    (tmp_path / "params.yaml").write_text((tiny_pipeline.root / "params.yaml").read_text())
    problems = check_declared(tmp_path, tiny_pipeline.reads)
    assert "train@1e3-dense: reads train.thinning but dvc.yaml does not list it" in problems
    assert any(p.startswith("compare@1e3-dense: lists generate but never reads") for p in problems)


def test_reads_are_recorded_per_key_not_during_validation(monkeypatch, tmp_path):
    """Validation touches every field and is not recorded; a mapping entry is its own key."""
    import fly64study.design as design

    raw = read_params(profile_params("tiny"))
    monkeypatch.setattr(design, "_reads", set())
    monkeypatch.setattr(design, "_recording", False)
    monkeypatch.setenv(design.RECORD_ENV, str(tmp_path))
    monkeypatch.setattr(design.atexit, "register", lambda fn: None)
    params = params_from_dict(raw)
    assert design._recording and design._reads == set()  # building and checking read nothing
    assert isinstance(params.train, _Section) and isinstance(params.train.jobs, _Keyed)
    _ = params.train.thinning, params.train.jobs["dense"], "1e4" in params.design.doses
    assert design._reads == {"train.thinning", "train.jobs.dense"}  # a membership test reads no value
    list(params.design.views)
    assert "design.views" in design._reads
