"""Bundles: byte-reproducible, verified on load, never unpickled."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile

import h5py
import numpy as np
import pytest
import torch

from fly64study import bundle as bundle_mod
from fly64study.bundle import BundleError, load_inference_model, read_bundle, write_bundle
from fly64study.files import sha256_file
from fly64study.networks import Autoencoder, network_config
from fly64study.physics import make_probe


SETTINGS = {"bp_unet": {"width": 4, "depth": 2, "stride": 1, "skips": "concat"}, "ptychopinn": {"n_filters_scale": 0.25}}


def _model(seed=0, network="bp_unet"):
    torch.manual_seed(seed)
    cfg = network_config(16, 2, 3.0, network, SETTINGS[network])
    return Autoencoder(cfg, torch.from_numpy(make_probe(16, aperture=0.4, central_stop=0.3, defocus=2.0)))


@pytest.fixture
def written(tmp_path):
    path = tmp_path / "wts.h5.zip"
    sha = write_bundle(path, _model(), dose=1000.0, dose_label="1e3", extra={"view": "dense"})
    return path, sha


def test_round_trip_gives_the_same_network(written):
    path, sha = written
    net = load_inference_model(path, expected_sha256=sha)
    ref = _model().net.eval()
    amp = torch.rand(2, 4, 16, 16)
    off = torch.tensor([[[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]]).expand(2, 4, 2)
    with torch.no_grad():
        torch.testing.assert_close(net(amp, off), ref(amp, off))
    b = read_bundle(path)
    assert set(b.configs) == {"autoencoder", "diffraction_to_obj"}
    assert b.configs["diffraction_to_obj"]["dose_label"] == "1e3"
    assert b.configs["autoencoder"]["probe"]["shape"] == [16, 16]
    assert b.manifest["backend"]["name"] == "pytorch"


def test_bytes_are_reproducible_and_sorted(tmp_path, written):
    path, sha = written
    again = tmp_path / "again.h5.zip"
    assert write_bundle(again, _model(), dose=1000.0, dose_label="1e3", extra={"view": "dense"}) == sha
    assert again.read_bytes() == path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    other = tmp_path / "other.h5.zip"
    assert write_bundle(other, _model(seed=1), dose=1000.0, dose_label="1e3") != sha


def test_one_changed_byte_is_refused(written):
    path, sha = written
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("diffraction_to_obj/weights.h5")
    data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        read_bundle(path, expected_sha256=sha)
    assert sha in str(err.value) and sha256_file(path) in str(err.value)
    with pytest.raises(BundleError):  # without the expected digest, the manifest's catch it
        read_bundle(path)


def _rewrite(src, dst, extra: dict[str, bytes] | None = None, replace: dict[str, bytes] | None = None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, (replace or {}).get(info.filename, zin.read(info)))
        for name, data in (extra or {}).items():
            zout.writestr(name, data)


@pytest.mark.parametrize("member", ["../evil.json", "/etc/evil.json", "a/../../evil.json"])
def test_escaping_member_paths_are_refused(tmp_path, written, member):
    bad = tmp_path / "bad.zip"
    _rewrite(written[0], bad, extra={member: b"{}"})
    with pytest.raises(BundleError, match="absolute or parent"):
        read_bundle(bad)


def test_unlisted_member_is_refused(tmp_path, written):
    bad = tmp_path / "bad.zip"
    _rewrite(written[0], bad, extra={"extra/payload.pkl": b"\x80\x04."})
    with pytest.raises(BundleError, match="not listed in the manifest"):
        read_bundle(bad)


def test_member_digest_mismatch_names_both(tmp_path, written):
    bad = tmp_path / "bad.zip"
    config = json.dumps({"class": "DiffractionToObject"}).encode()
    _rewrite(written[0], bad, replace={"diffraction_to_obj/config.json": config})
    with pytest.raises(BundleError, match=r"has SHA256 [0-9a-f]{64}, the manifest says [0-9a-f]{64}"):
        read_bundle(bad)


def test_oversized_member_is_refused(tmp_path, written, monkeypatch):
    monkeypatch.setattr(bundle_mod, "MAX_MEMBER_BYTES", 1000)
    with pytest.raises(BundleError, match="exceeds the limit"):
        read_bundle(written[0])


def test_non_numeric_hdf5_entry_is_refused(tmp_path, written):
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        h5.create_dataset("probe", data=np.array([b"not", b"numbers"], dtype=object), dtype=h5py.string_dtype())
    bad = tmp_path / "bad.zip"
    weights = buf.getvalue()
    with zipfile.ZipFile(written[0]) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    manifest["sha256"]["diffraction_to_obj/weights.h5"] = hashlib.sha256(weights).hexdigest()
    _rewrite(written[0], bad, replace={"diffraction_to_obj/weights.h5": weights,
                                       "manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(BundleError, match="not a numeric array"):
        read_bundle(bad)


def test_not_a_zip(tmp_path):
    path = tmp_path / "junk.h5.zip"
    path.write_bytes(b"\x80\x04\x95junk")
    with pytest.raises(BundleError, match="not a readable zip"):
        read_bundle(path)
