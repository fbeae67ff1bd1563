"""Phase A: every profile is valid, and each invalid value is refused with its field named."""
from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest

from conftest import REPO, copy_project, profile_params, sh
from fly64study.design import ParamsError, design_record, load_params, params_from_dict, read_params, write_params
from fly64study.profiles import ProfileError, compose

PROFILES = sorted(p.stem for p in (REPO / "profiles").glob("*.yaml"))


def _raw(profile: str = "tiny") -> dict:
    return read_params(profile_params(profile))


def _leaf_keys(d: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("doses", "views", "jobs"):  # entries are the profile's choice
            keys |= _leaf_keys(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


def test_profiles_exist_and_validate():
    assert {"tiny", "default", "full"} <= set(PROFILES)
    for name in PROFILES:
        load_params(profile_params(name))


def test_committed_params_is_the_default_profile():
    assert (REPO / "params.yaml").read_text() == (REPO / "profiles" / "default.yaml").read_text()


def test_profiles_share_one_key_set():
    keys = {name: _leaf_keys(_raw(name)) for name in PROFILES}
    assert all(k == keys["default"] for k in keys.values())


def test_full_profile_holds_the_design_values():
    full = load_params(profile_params("full"))
    assert full.design.N == 128
    assert full.generate.n_positions >= 10_000
    assert list(full.design.doses.values()) == [1e3, 1e4, 1e5]
    assert full.design.views == {"baseline": None, "dense": 0.7, "sparse": 0.2}
    assert full.design.neighbor_count == 7 and full.design.gridsizes == (1, 2)
    seeds = full.design.seeds
    assert (seeds.simulation, seeds.grouping, seeds.subsampling) == (42, 123, 456)


def _set(raw: dict, path: str, value) -> dict:
    raw = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


_DELETE = object()

BAD = [
    ("design.neighbor_count", 3, "design.neighbor_count: K=3 is smaller than C = gridsize² = 4"),
    ("design.views.sparse", 1.5, "design.views.sparse: overlap fraction 1.5 is outside [0, 1)"),
    ("design.views.dense", -0.1, "design.views.dense: overlap fraction -0.1 is outside [0, 1)"),
    ("design.doses", {}, "design.doses: the dose list is empty"),
    ("design.doses.1e3", -1000.0, "design.doses.1e3: dose -1000.0 must be a positive number"),
    ("design.doses.1e4", 0.0, "design.doses.1e4: dose 0.0 must be a positive number"),
    ("design.doses", {1000.0: 1000.0}, "key 1000.0 is not text"),
    ("design.doses", {"1 e3": 1000.0}, "design.doses.1 e3: label"),
    ("design.N", 33, "design.N: patch size 33 must be an even integer"),
    ("design.gridsizes", [], "design.gridsizes: empty"),
    ("design.split_axis", "z", "design.split_axis: expected one of"),
    ("design.seeds.grouping", -1, "design.seeds.grouping: must be a non-negative integer"),
    ("design.metrics.frc_threshold", 1.5, "design.metrics.frc_threshold"),
    ("design.metrics.components", ["phase", "colour"], "design.metrics.components"),
    ("design.colour", 1, "design.colour: unknown key"),
    ("reconstruct.tune.view", "dense", "reconstruct.tune.view: no longer a parameter: since 2026-12-01 every "
                                       "compared view (compare.views) is tuned on its own training split"),
    ("design.N", _DELETE, "design.N: missing"),
    ("design.N", "64", "design.N: expected an integer"),
    ("generate.object_size", 20, "generate.object_size: M=20 leaves no room"),
    ("generate.n_positions", 1, "generate.n_positions"),
    ("generate.base_sample", "/etc/passwd.npz", "generate.base_sample"),
    ("generate.base_sample", "inputs/../x.npz", "generate.base_sample"),
    ("generate.base_sample", "inputs/x.tif", "generate.base_sample: 'inputs/x.tif' must be a relative path inside inputs/ ending in .npz, .h5, .hdf5"),
    ("generate.base_sample", "inputs/absent.h5", "generate.base_sample: inputs/absent.h5: no such file"),
    ("generate.geometry.pixel_size_m", 0.0, "generate.geometry.pixel_size_m: must be > 0"),
    ("generate.probe.aperture", 0.0, "generate.probe.aperture"),
    ("generate.probe.central_stop", 1.0, "generate.probe.central_stop"),
    ("generate.probe.defocus", -1.0, "generate.probe.defocus"),
    ("generate.object.amplitude_min", 0.0, "generate.object.amplitude_min"),
    ("generate.object.phase_range", 10.0, "generate.object.phase_range"),
    ("overlap.min_positions", 2, "overlap.min_positions: 2 is below C = 4"),
]


@pytest.mark.parametrize("path,value,message", BAD, ids=[b[0] + ("=" + repr(b[1]) if b[1] is not _DELETE else " deleted") for b in BAD])
def test_invalid_value_names_its_field(path, value, message):
    with pytest.raises(ParamsError) as err:
        params_from_dict(_set(_raw(), path, value))
    assert message in str(err.value)


def test_params_error_is_a_value_error():
    assert issubclass(ParamsError, ValueError)


def test_params_are_read_as_dvc_reads_them(tmp_path):
    """YAML 1.2, DVC's own parser: the stages and DVC see the same keys and values."""
    from dvc.utils.serialize import parse_yaml

    for name in PROFILES:
        path = profile_params(name)
        assert read_params(path) == parse_yaml(path.read_text(), str(path))
    # where YAML 1.1 (PyYAML) and 1.2 differ: an unquoted label, yes/no, 0o17
    text = "doses:\n  1e3: 1000.0\nflag: yes\noctal: 0o17\n"
    (tmp_path / "p.yaml").write_text(text)
    assert read_params(tmp_path / "p.yaml") == parse_yaml(text, "p.yaml") == {
        "doses": {1000.0: 1000.0}, "flag": "yes", "octal": 15}


UNQUOTED = '"1e3": 1000.0'


@pytest.mark.parametrize("line,message", [
    ("1e3: 1000.0", "design.doses: key 1000.0 is not text"),          # YAML 1.2: a number, to DVC too
    ('"1.5e3": 1500.0', "design.doses.1.5e3: label '1.5e3' has a '.'"),  # splits design.doses.1.5e3
    ('"1e3": "1e3"', "design.doses.1e3: expected a number, got the text '1e3'"),
])
def test_a_label_or_dose_dvc_would_read_otherwise_is_refused(tmp_path, line, message):
    text = compose("tiny", REPO / "profiles")
    assert UNQUOTED in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(UNQUOTED, line, 1))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value).startswith(message)


def test_an_unquoted_dose_label_stops_make_repro_before_any_stage(tmp_path):
    """DVC itself names no key for `1e3:` (its design stage fails sorting a float among text keys,
    its 1e3 stages are gone from `dvc stage list`): `make repro` checks the params first."""
    root = copy_project(tmp_path / "study")
    params = root / "params.yaml"
    params.write_text(params.read_text().replace(UNQUOTED, "1e3: 1000.0", 1))
    assert "generate@1e3" not in sh(root, "dvc", "stage", "list").stdout  # what DVC makes of it
    proc = sh(root, "make", "--no-print-directory", "-o", ".venv/.installed", "PY=python", "repro", check=False)
    assert proc.returncode == 2 and "key 1000.0 is not text" in proc.stderr and 'quote it, e.g. "1e3"' in proc.stderr
    assert "Traceback" not in proc.stderr and not (root / "data").exists()


def test_written_params_read_back_equal_where_pyyaml_would_unquote_labels(tmp_path):
    raw = _raw("tiny")
    write_params(raw, tmp_path / "params.yaml")
    assert '"1e3"' in (tmp_path / "params.yaml").read_text() or "'1e3'" in (tmp_path / "params.yaml").read_text()
    assert read_params(tmp_path / "params.yaml") == raw


def test_the_default_profile_header_names_every_profile():
    header = (REPO / "profiles" / "default.yaml").read_text().split("\n\n", 1)[0]
    listed = re.search(r"PROFILE=([\w|\n# ]+)`", header)
    assert listed and set(re.sub(r"[\n# ]", "", listed[1]).split("|")) == set(PROFILES), header


def test_each_profile_is_only_what_differs_from_the_default():
    """Written once: a profile repeats no default value, and each composes to params every stage accepts."""
    default = _raw("default")
    for name in (p for p in PROFILES if p != "default"):
        delta = read_params_text((REPO / "profiles" / f"{name}.yaml").read_text())
        for key, value in _leaves(delta):
            assert value != _get(default, key), f"profiles/{name}.yaml repeats the default {key}: {value!r}"
        params = load_params(profile_params(name))
        assert params.design.doses  # validated, every key present
        with pytest.raises(ParamsError, match=f"a profile, only the keys it changes.*make profile PROFILE={name}"):
            load_params(REPO / "profiles" / f"{name}.yaml")  # the stages read whole params, never a profile
    assert len((REPO / "profiles" / "quality.yaml").read_text().splitlines()) < 50


def test_composing_merges_maps_replaces_values_and_null_removes(tmp_path):
    (tmp_path / "default.yaml").write_text(
        "# the base\n\na:                # A\n  b: 1             # B\n  c: [1, 2]\n  d:\n    x: 1\n    y: 2\nz: text\n")
    (tmp_path / "p.yaml").write_text("# profile p: for a test\n\na:\n  b: 5             # B in p\n  c: [3]\n  d:\n    y: null\n")
    text = compose("p", tmp_path)
    assert text.startswith("# profile p: for a test\n# Written by `make profile PROFILE=p`")
    assert read_params_text(text) == {"a": {"b": 5, "c": [3], "d": {"x": 1}}, "z": "text"}
    assert "b: 5             # B in p" in text and "a:                # A" in text  # comments travel with keys
    assert compose("default", tmp_path) == (tmp_path / "default.yaml").read_text()
    for bad, message in (("a:\n  q: 1\n", "a.q: not a parameter of profiles/default.yaml"),
                         ("a:\n  q: null\n", "a.q: null removes a key, and profiles/default.yaml has no a.q"),
                         ("- 1\n", "a profile is a mapping")):
        (tmp_path / "bad.yaml").write_text(bad)
        with pytest.raises(ProfileError, match=re.escape(message)):
            compose("bad", tmp_path)
    with pytest.raises(ProfileError, match="no profile 'huge'.*choose one of bad default p"):
        compose("huge", tmp_path)


def read_params_text(text: str):
    from dvc.utils.serialize import parse_yaml

    return parse_yaml(text, "profile")


def _get(d: dict, key: str):
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def test_design_record():
    params = load_params(profile_params("default"))
    rec = design_record(params.design)
    assert rec["dose_list"] == [1e3, 1e4, 1e5]
    assert rec["group_sizes"] == {"1": 1, "2": 4}
    assert rec["intensity_scale_nominal"]["1e4"] == pytest.approx(100.0 / 32)
    assert rec["metrics"]["components"][0] == "phase"


def test_train_jobs_must_name_a_view():
    raw = _set(_raw(), "train.jobs", {"baseline": 1, "medium": 2})
    with pytest.raises(ParamsError, match=r"train.jobs.medium: not a view of design.views"):
        params_from_dict(raw)
    with pytest.raises(ParamsError, match="train.jobs.dense: gridsize 3 is not in design.gridsizes"):
        params_from_dict(_set(_raw(), "train.jobs.dense", 3))
    with pytest.raises(ParamsError, match="train.thinning"):
        params_from_dict(_set(_raw(), "train.thinning", 1.0))
    # no split: refine@ would score the counts it fits
    with pytest.raises(ParamsError, match=r"train.thinning: must lie in \(0, 1\).*refine@ fit the noise"):
        params_from_dict(_set(_raw(), "train.thinning", 0.0))
    for key, value in (("refine.epochs", 0), ("refine.learning_rate", 0.0), ("refine.patience", 0)):
        with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
            params_from_dict(_set(_raw(), key, value))
    with pytest.raises(ParamsError, match="train.bp_unet.depth"):
        params_from_dict(_set(_raw(), "train.bp_unet.depth", 6))
    # the published network halves N down to 8 pixels: a power of two
    with pytest.raises(ParamsError, match="design.N: 48; the published PtychoPINN network needs a power of two"):
        params_from_dict(_set(_set(_raw(), "design.N", 48), "train.bp_unet.depth", 1))
    # the U-Net's settings moved into its own section: the old keys say where
    raw = _raw()
    raw["train"]["width"] = 16
    with pytest.raises(ParamsError, match=r"train.width: no longer a parameter: .* train.bp_unet.width"):
        params_from_dict(raw)
    for key, bads in (("refine.networks", ([], ["ptychopinn", "ptychopinn"], ["unet"])),
                      ("hybrid.networks", ([], ["ptychopinn", "ptychopinn"], ["unet"]))):
        for bad in bads:
            if bad == [] and key == "refine.networks":
                params_from_dict(_set(_raw(), key, bad))  # refine nothing: the refine stages write empty manifests
                continue
            with pytest.raises(ParamsError, match=key.replace(".", r"\.") + ": expected distinct network names"):
                params_from_dict(_set(_raw(), key, bad))
    # a warm start longer than LSQML's own cap would compare more epochs against fewer
    for value in (0, 11):  # tiny: reconstruct.epochs 10
        with pytest.raises(ParamsError, match=r"hybrid\.epochs: .*\[1, reconstruct\.epochs = 10\]"):
            params_from_dict(_set(_raw(), "hybrid.epochs", value))


def _out_of_range(path: str, value):
    """A value the field must refuse: negative numbers, an unknown name, a wrong type."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)) or value is None:
        return -1
    if isinstance(value, list):
        return [-1] if value and isinstance(value[0], int) else ["no-such-entry"]
    if path == "generate.base_sample":
        return "../outside.npz"
    return "no-such-entry"


def _leaves(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _leaves(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


LEAVES = _leaves(_raw("tiny"))


@pytest.mark.parametrize("path,value", LEAVES, ids=[p for p, _ in LEAVES])
def test_every_field_refuses_an_out_of_range_value_and_names_itself(path, value):
    bad = _out_of_range(path, value)
    with pytest.raises(ParamsError) as err:
        params_from_dict(_set(_raw("tiny"), path, bad))
    # the message starts with the field (an entry of a list or mapping: the field holding it)
    assert str(err.value).startswith(path.rsplit(".", 1)[0] if path.startswith("train.jobs.") else path), str(err.value)


@pytest.mark.parametrize("stage,args", [
    ("reconstruct", ["--dose", "1e3", "--view", "dense", "--out", "OUT"]),
    ("compare", ["--dose", "1e3", "--view", "dense", "--out", "OUT"]),
    ("report", ["--out", "OUT"]),
    ("train", ["--artifact-root", "OUT"]),
])
def test_stages_stop_on_bad_params_before_any_work(stage, args, tmp_path):
    params = tmp_path / "params.yaml"
    write_params(_set(_raw("tiny"), "reconstruct.epochs", 0), params)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), "--params", str(params),
                           *[str(out) if a == "OUT" else a for a in args]],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: reconstruct.epochs: must be >= 1")
    assert "Traceback" not in proc.stderr and not out.exists()
