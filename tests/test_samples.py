"""Real samples in (fly64study.samples) and Ptychodus products out (fly64study.products)."""
from __future__ import annotations

import hashlib
import time

import h5py
import numpy as np
import pytest

from fly64study import physics
from fly64study.contract import ContractError
from fly64study.products import write_product
from fly64study.samples import MIN_KEPT, fit_probe, load_sample, normalise_object
from fly64study.simulate import extract_patches

N = 32


def _upstream_object(rng, shape=(90, 130)) -> np.ndarray:
    """A non-square complex128 object brighter than one, as reconstructions of real data come."""
    amp = 1.4 - 0.5 * rng.random(shape)
    return (amp * np.exp(1j * rng.uniform(-1, 1, shape))).astype(np.complex128)


def _big_probe(size=80, centre=(44, 37)) -> np.ndarray:
    """A probe of another size than N, off its array's centre."""
    p = np.zeros((size, size), np.complex128)
    core = physics.make_probe(N // 2, aperture=0.6, central_stop=0.0, defocus=4.0).astype(np.complex128)
    r0, c0 = centre[0] - N // 4, centre[1] - N // 4
    p[r0:r0 + N // 2, c0:c0 + N // 2] = core
    return p


def test_an_upstream_npz_loads_by_the_stated_rules(tmp_path):
    rng = np.random.default_rng(0)
    obj, probe = _upstream_object(rng), _big_probe()
    path = tmp_path / "upstream.npz"
    np.savez(path, probeGuess=probe, objectGuess=obj, xcoords=rng.random(10), ycoords=rng.random(10),
             diff3d=rng.random((10, 8, 8)), scan_index=np.zeros(10, np.int64))  # extra keys: ignored
    s = load_sample(path, N)
    assert s.probe.shape == (N, N) and s.probe.dtype == np.complex64
    assert s.obj.shape == (90, 130) and s.obj.dtype == np.complex64
    # the probe's whole intensity, moved to the window's centre pixel N/2
    assert s.record["probe_fit"]["kept_intensity"] == pytest.approx(1.0)
    assert s.record["probe_fit"]["from_shape"] == [80, 80]
    i = np.abs(s.probe) ** 2
    centroid = [(i.sum(axis=1 - a) * np.arange(N)).sum() / i.sum() for a in (0, 1)]
    np.testing.assert_allclose(centroid, [N / 2, N / 2], atol=1.0)
    r, c = s.record["probe_fit"]["centroid_px"]
    np.testing.assert_array_equal(s.probe, probe[r - N // 2:r + N // 2, c - N // 2:c + N // 2].astype(np.complex64))
    same, rec = fit_probe(s.probe, N)  # already N x N: kept as it is
    np.testing.assert_array_equal(same, s.probe)
    assert rec["rule"] == "N×N: kept as it is"
    assert s.geometry == {}  # an NPZ carries no metres: generate.geometry's declared values apply


def test_a_small_probe_is_zero_padded_and_a_cut_one_refused():
    small = physics.make_probe(16, aperture=0.6, central_stop=0.0, defocus=1.0)
    out, rec = fit_probe(small, N)
    assert out.shape == (N, N) and rec["kept_intensity"] == pytest.approx(1.0)
    assert np.abs(out[:4]).max() == 0  # padding
    wide = np.ones((200, 200), np.complex64)  # flat illumination: mostly outside any N x N window
    with pytest.raises(ContractError, match=rf"keeps only 2\.6% of its intensity \(at least {MIN_KEPT:.0%}.*raise design.N"):
        fit_probe(wide, N)


def test_object_normalisation_keeps_contrast_and_phase():
    rng = np.random.default_rng(1)
    obj = _upstream_object(rng)
    out, rec = normalise_object(obj)
    assert np.abs(out).max() == pytest.approx(1.0, abs=1e-6)
    assert rec["max_amplitude_before"] == pytest.approx(np.abs(obj).max())
    np.testing.assert_allclose(np.abs(out) * rec["max_amplitude_before"], np.abs(obj), rtol=1e-5)
    np.testing.assert_allclose(np.angle(out), np.angle(obj), atol=1e-5)


@pytest.mark.parametrize("case, message", [
    ("nan_object", r"object: 1 non-finite values \(NaN or inf\); replace them"),
    ("probe_1d", r"probe: expected a 2-D array, got shape \(64,\); a probe is an image"),
    ("small_object", r"object: 40×50 px is too small to scan an N=32 probe; each side needs at least 2·N = 64 px"),
    ("object_below_N", r"object: 20×20 px is too small to scan an N=32 probe"),
    ("zero_object", r"object: zero everywhere; an object must transmit"),
    ("probe_outside", r"probe: an N=32 window around its centroid keeps only"),
    ("real_probe", r"probe: expected a complex array, got dtype float64"),
    ("no_object", r"objectGuess: missing; an upstream-layout NPZ holds probeGuess and objectGuess"),
])
def test_bad_real_inputs_are_refused_naming_the_file_and_the_fix(tmp_path, case, message):
    rng = np.random.default_rng(2)
    probe, obj = _big_probe(), _upstream_object(rng)
    arrays = {"probeGuess": probe, "objectGuess": obj}
    if case == "nan_object":
        obj[3, 4] = np.nan
    elif case == "probe_1d":
        arrays["probeGuess"] = probe[0, :64]
    elif case == "small_object":
        arrays["objectGuess"] = obj[:40, :50]
    elif case == "object_below_N":
        arrays["objectGuess"] = obj[:20, :20]
    elif case == "zero_object":
        arrays["objectGuess"] = np.zeros_like(obj)
    elif case == "probe_outside":
        ring = np.zeros((200, 200), np.complex128)
        ring[::3, ::3] = 1.0  # spread over the whole array
        arrays["probeGuess"] = ring
    elif case == "real_probe":
        arrays["probeGuess"] = np.abs(probe)
    elif case == "no_object":
        del arrays["objectGuess"]
    path = tmp_path / f"{case}.npz"
    np.savez(path, **arrays)
    with pytest.raises(ContractError, match=rf"^{path}: {message}"):
        load_sample(path, N)


def _product(tmp_path, rng, **over):
    obj = (rng.random((70, 96)) * np.exp(1j * rng.random((70, 96)))).astype(np.complex64)
    probe = physics.make_probe(N, aperture=0.4, central_stop=0.3, defocus=3.0)
    x, y = rng.uniform(16, 80, 25), rng.uniform(16, 54, 25)
    x[:5], y[:5] = rng.integers(16, 80, 5), rng.integers(16, 54, 5)  # whole pixels: an exact patch to compare
    kw = dict(name="LSQML dense 1e3", comments="{}", probe=probe, obj=obj, xcoords=x, ycoords=y,
              geometry={"pixel_size_m": 2e-8, "photon_energy_eV": 8800.0, "detector_distance_m": 2.0},
              probe_photon_count=1234.5, losses=[(1, 0.5), (2, 0.25)])
    kw.update(over)
    path = tmp_path / "product.h5"
    write_product(path, **kw)
    return path, kw


def test_our_products_open_in_ptychodus_with_equal_arrays(tmp_path):
    from ptychodus.api import io  # make setup installs it (see the Makefile: without its declared dependencies)

    rng = np.random.default_rng(3)
    path, kw = _product(tmp_path, rng)
    product = io.load_product(path)
    np.testing.assert_array_equal(product.object_.get_array()[0], kw["obj"])
    np.testing.assert_array_equal(product.probes.get_array()[0, 0], kw["probe"])
    assert product.object_.get_pixel_geometry().width_m == 2e-8
    # Ptychodus places each position where the study simulated it: its patch corner plus its sub-pixel
    # shift is extract_patches' offset (x - N/2, y - N/2), and at whole pixels it cuts the same pixels
    geometry, probe_geometry = product.object_.get_geometry(), product.probes.get_geometry()
    whole = 0
    cx = geometry.map_probe_positions_to_object_x_px(product.probe_positions)
    cy = geometry.map_probe_positions_to_object_y_px(product.probe_positions)
    for x, y, px, py in zip(kw["xcoords"], kw["ycoords"], cx, cy):
        bounds = probe_geometry.resolve_patch_bounds(float(px), float(py))
        assert bounds.x_slice.start + bounds.dx == pytest.approx(x - N / 2, abs=1e-9)
        assert bounds.y_slice.start + bounds.dy == pytest.approx(y - N / 2, abs=1e-9)
        if float(x).is_integer() and float(y).is_integer() and max(bounds.dx, bounds.dy) < 1e-9:
            np.testing.assert_array_equal(kw["obj"][bounds.y_slice, bounds.x_slice],
                                          extract_patches(kw["obj"], np.array([x]), np.array([y]), N)[0])
            whole += 1
    assert whole >= 3  # of the 5 whole-pixel positions (round-off through metres may shift one by 1 - 1e-14)
    assert product.metadata.photon_energy_eV == 8800.0 and product.metadata.detector_distance_m == 2.0
    assert product.metadata.probe_photon_count == 1234.5 and product.metadata.name == "LSQML dense 1e3"
    assert [(loss.epoch, loss.value) for loss in product.losses] == [(1, 0.5), (2, 0.25)]
    # and back in: a Ptychodus product is a base sample, its pixel size and energy replace the declared ones
    s = load_sample(path, N)
    np.testing.assert_allclose(s.obj, kw["obj"] / np.abs(kw["obj"]).max(), rtol=1e-6)
    assert s.geometry == {"pixel_size_m": 2e-8, "photon_energy_eV": 8800.0, "detector_distance_m": 2.0}


def test_products_are_byte_reproducible(tmp_path):
    digests = []
    for sub in ("a", "b"):
        time.sleep(1.1)  # HDF5 timestamps have a resolution of one second
        (tmp_path / sub).mkdir()
        path, _ = _product(tmp_path / sub, np.random.default_rng(4))
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_a_product_with_several_probe_modes_gives_the_first(tmp_path):
    rng = np.random.default_rng(5)
    path, kw = _product(tmp_path, rng)
    other = (0.1 * kw["probe"]).astype(np.complex64)
    layer = (0.5 * kw["obj"]).astype(np.complex64)
    with h5py.File(path, "r+") as h5:
        pixel = dict(h5["probe"].attrs)
        del h5["probe"], h5["object"]
        # 2 OPR modes x 2 incoherent modes; 2 object layers
        probe = h5.create_dataset("probe", data=np.stack([np.stack([kw["probe"], other]), np.stack([other, other])]))
        probe.attrs.update(pixel)
        obj = h5.create_dataset("object", data=np.stack([kw["obj"], layer]))
        obj.attrs.update({"center_x_m": 0.0, "center_y_m": 0.0, **pixel})
    s = load_sample(path, N)
    np.testing.assert_array_equal(s.probe, kw["probe"])
    np.testing.assert_allclose(s.obj, kw["obj"] / np.abs(kw["obj"]).max(), rtol=1e-6)
    with h5py.File(path, "r+") as h5:
        h5["probe"].attrs["pixel_width_m"] = 1e-8
    with pytest.raises(ContractError, match="probe: pixels of 1e-08 × 2e-08 m differ from the object's 2e-08 m"):
        load_sample(path, N)
    with h5py.File(path, "r+") as h5:
        del h5["object"]
    with pytest.raises(ContractError, match="object: missing; a Ptychodus product holds"):
        load_sample(path, N)
