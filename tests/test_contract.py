"""Phase B: the NPZ contract round-trips, writes reproducible bytes, and refuses each bad input."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from conftest import small_dataset
from fly64study.contract import (
    ContractError,
    Dataset,
    from_legacy_layout,
    load_dataset,
    save_dataset,
    validate,
    write_npz,
)


def _arrays(ds: Dataset) -> dict:
    return dict(ds.arrays())


def _write_raw(path, arrays: dict, metadata) -> None:
    out = dict(arrays)
    if metadata is not None:
        out["_metadata"] = np.array(json.dumps(metadata))
    write_npz(path, out)


def test_round_trip(tmp_path):
    ds = small_dataset()
    save_dataset(tmp_path / "a.npz", ds)
    back = load_dataset(tmp_path / "a.npz")
    for key, arr in ds.arrays().items():
        np.testing.assert_array_equal(getattr(back, key), arr)
        assert getattr(back, key).dtype == arr.dtype
    assert back.metadata == ds.metadata


def test_bytes_are_reproducible_and_undated(tmp_path):
    ds = small_dataset()
    save_dataset(tmp_path / "a.npz", ds)
    save_dataset(tmp_path / "b.npz", ds)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        names = [i.filename for i in zf.infolist()]
        assert names == sorted(names)
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_metadata_is_a_0d_json_string(tmp_path):
    save_dataset(tmp_path / "a.npz", small_dataset())
    with np.load(tmp_path / "a.npz", allow_pickle=False) as npz:
        meta = npz["_metadata"]
    assert meta.shape == () and meta.dtype.kind == "U"
    assert json.loads(str(meta))["N"] == 16


@pytest.mark.parametrize("key", ["diffraction", "probeGuess", "objectGuess", "xcoords", "ycoords"])
def test_missing_key(tmp_path, key):
    ds = small_dataset()
    arrays = _arrays(ds)
    del arrays[key]
    _write_raw(tmp_path / "x.npz", arrays, ds.metadata)
    with pytest.raises(ContractError, match=f"{key}: missing"):
        load_dataset(tmp_path / "x.npz")


def test_missing_metadata(tmp_path):
    ds = small_dataset()
    _write_raw(tmp_path / "x.npz", _arrays(ds), None)
    with pytest.raises(ContractError, match="_metadata: missing"):
        load_dataset(tmp_path / "x.npz")


def test_metadata_missing_field():
    ds = small_dataset()
    meta = dict(ds.metadata)
    del meta["nphotons"]
    with pytest.raises(ContractError, match="_metadata: missing field 'nphotons'"):
        validate(_arrays(ds), meta)


BAD_ARRAYS = [
    ("diffraction", lambda a: (a * 100).astype(np.int64), "diffraction: expected float32 amplitudes"),
    ("diffraction", lambda a: a.astype(np.float64), "diffraction: expected dtype float32, got float64"),
    ("probeGuess", lambda a: a.real.astype(np.float32), "probeGuess: expected dtype complex64"),
    ("objectGuess", lambda a: np.abs(a), "objectGuess: expected dtype complex64"),
    ("objectGuess", lambda a: a[:8, :8], "objectGuess: shape (8, 8) is smaller than the probe"),
    ("xcoords", lambda a: a[:-1], "ycoords: length 6 differs from xcoords' 5"),
    ("ycoords", lambda a: np.append(a, 20.0), "ycoords: length 7 differs from xcoords' 6"),
    ("xcoords", lambda a: a.astype(np.float32), "xcoords: expected dtype float64"),
    ("diffraction", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a).astype(np.float32),
     "diffraction: holds 1 NaN or infinite"),
    ("probeGuess", lambda a: np.where(np.eye(a.shape[0], dtype=bool), np.inf, a).astype(np.complex64),
     "probeGuess: holds 16 NaN or infinite"),
    ("xcoords", lambda a: np.where(np.arange(a.size) == 0, np.nan, a), "xcoords: holds 1 NaN"),
    ("diffraction", lambda a: -a, "diffraction: holds negative values"),
    ("diffraction", lambda a: a[:, :8, :8], "diffraction: expected shape (n, N, N) = (6, 16, 16)"),
    ("Y", lambda a: a.astype(np.complex128), "Y: expected dtype complex64"),
]


@pytest.mark.parametrize("key,mutate,message", BAD_ARRAYS, ids=[m for _, _, m in BAD_ARRAYS])
def test_bad_array_is_refused_on_load(tmp_path, key, mutate, message):
    ds = small_dataset()
    arrays = _arrays(ds)
    arrays[key] = mutate(arrays[key])
    _write_raw(tmp_path / "x.npz", arrays, ds.metadata)
    with pytest.raises(ContractError) as err:
        load_dataset(tmp_path / "x.npz")
    assert message in str(err.value)
    assert str(tmp_path / "x.npz") in str(err.value)


def test_bad_dataset_is_refused_on_save(tmp_path):
    ds = small_dataset()
    bad = Dataset(**{**_arrays(ds), "diffraction": ds.diffraction.astype(np.float64)}, metadata=ds.metadata)
    with pytest.raises(ContractError, match="diffraction"):
        save_dataset(tmp_path / "x.npz", bad)
    assert not any(tmp_path.iterdir())  # nothing written, not even a temp file


def test_legacy_layout_is_refused_with_a_hint_and_converts_explicitly(tmp_path):
    ds = small_dataset(n=6, N=16)
    arrays = _arrays(ds)
    arrays["diffraction"] = np.ascontiguousarray(np.moveaxis(arrays["diffraction"], 0, -1))  # (N, N, n)
    arrays["Y"] = np.ascontiguousarray(np.moveaxis(arrays["Y"], 0, -1))
    _write_raw(tmp_path / "legacy.npz", arrays, ds.metadata)
    with pytest.raises(ContractError, match=r"legacy \(N, N, n\) layout.*from_legacy_layout"):
        load_dataset(tmp_path / "legacy.npz")
    fixed, meta = from_legacy_layout(arrays, ds.metadata)
    validate(fixed, meta)
    np.testing.assert_array_equal(fixed["diffraction"], ds.diffraction)
    assert meta["transformations"][-1]["op"] == "from_legacy_layout"
    assert ds.metadata["transformations"] == []  # the input metadata is not mutated


def test_object_array_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, diffraction=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ContractError, match="object \\(pickled\\) array"):
        load_dataset(path)


def test_not_an_npz(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(ContractError, match="not a readable NPZ"):
        load_dataset(path)


def test_metadata_not_json(tmp_path):
    ds = small_dataset()
    arrays = _arrays(ds)
    arrays["_metadata"] = np.array("{not json")
    write_npz(tmp_path / "x.npz", arrays)
    with pytest.raises(ContractError, match="_metadata: not valid JSON"):
        load_dataset(tmp_path / "x.npz")


