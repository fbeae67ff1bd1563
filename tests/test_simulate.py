"""Phase C: the simulated datasets — splits, scan bounds, sub-pixel patches, determinism, base NPZ."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, profile_params
from fly64study import physics
from fly64study.contract import load_dataset, save_dataset
from fly64study.design import read_params, write_params
from fly64study.simulate import extract_patches, generate_dose, make_object, rng_for


@pytest.fixture(scope="module")
def splits(tiny):
    return generate_dose(tiny.design, tiny.generate, "1e5")


def test_no_position_in_both_splits(splits):
    train, test = splits
    a = set(zip(train.xcoords, train.ycoords))
    b = set(zip(test.xcoords, test.ycoords))
    assert a and b and not (a & b)
    threshold = train.metadata["transformations"][-1]["threshold"]
    assert train.ycoords.max() < threshold <= test.ycoords.min()
    assert train.n + test.n == 300
    assert train.metadata["split"] == "train" and test.metadata["split"] == "test"


def test_positions_keep_half_a_patch_from_the_edge(splits, tiny):
    N, M = tiny.design.N, tiny.generate.object_size
    for ds in splits:
        for c in (ds.xcoords, ds.ycoords):
            assert c.min() >= N / 2 and c.max() <= M - N / 2


def test_metadata_records_provenance(splits, tiny):
    meta = splits[0].metadata
    assert meta["nphotons"] == 1e5 and meta["N"] == tiny.design.N
    assert meta["seeds"] == {"simulation": 42}
    assert meta["source"]["source"] == "synthetic"
    assert meta["intensity_scale"] > 0
    assert [t["op"] for t in meta["transformations"]] == ["simulate", "split"]


def test_counts_are_poisson_about_the_forward_model(splits):
    """The stored amplitudes, squared and rescaled, scatter about s^2 |F(Y P)|^2 with variance = mean."""
    train, _ = splits
    s = train.metadata["intensity_scale"]
    counts = (train.diffraction.astype(np.float64) * s) ** 2
    amp = physics.diffraction_amplitude(torch.from_numpy(train.Y), torch.from_numpy(train.probeGuess)).numpy()
    expected = (s * amp.astype(np.float64)) ** 2
    assert counts.sum() / expected.sum() == pytest.approx(1.0, abs=0.005)
    dispersion = ((counts - expected) ** 2).sum() / expected.sum()
    assert dispersion == pytest.approx(1.0, abs=0.03)


def test_integer_positions_extract_exact_slices():
    rng = np.random.default_rng(0)
    obj = (rng.random((50, 60)) * np.exp(1j * rng.random((50, 60)))).astype(np.complex64)
    x, y = np.array([8.0, 30.0, 52.0]), np.array([8.0, 25.0, 42.0])
    patches = extract_patches(obj, x, y, 16)
    for p, xi, yi in zip(patches, x.astype(int), y.astype(int)):
        np.testing.assert_allclose(p, obj[yi - 8:yi + 8, xi - 8:xi + 8], atol=1e-5)


def test_subpixel_positions_follow_a_smooth_object():
    """On a band-limited object the Fourier-shifted patch equals the object evaluated off-grid."""
    M, N = 64, 16
    yy, xx = np.indices((M, M), dtype=np.float64)

    def field(y, x):
        return np.exp(1j * (0.8 * np.sin(2 * np.pi * 3 * x / M) + 0.5 * np.cos(2 * np.pi * 2 * y / M)))

    obj = field(yy, xx).astype(np.complex64)
    x, y = np.array([20.3, 33.75]), np.array([30.6, 21.2])
    patches = extract_patches(obj, x, y, N)
    a = np.arange(N)
    for p, xi, yi in zip(patches, x, y):
        truth = field(yi - N / 2 + a[:, None], xi - N / 2 + a[None, :])
        np.testing.assert_allclose(p, truth, atol=1.5e-3)


def test_object_is_physical_and_broadband(tiny):
    obj = make_object(256, tiny.generate.object, rng_for(42, 0))
    amp = np.abs(obj)
    assert amp.min() >= tiny.generate.object.amplitude_min - 1e-6 and amp.max() <= 1.0 + 1e-6
    assert np.ptp(np.angle(obj)) <= tiny.generate.object.phase_range + 1e-5
    # features at every spatial frequency up to Nyquist: no empty ring in the phase spectrum
    spec = np.abs(np.fft.fft2(np.angle(obj) - np.angle(obj).mean())) ** 2
    k = np.fft.fftfreq(256)
    ring = (np.hypot(k[None, :], k[:, None]) * 256).astype(int)
    power = np.bincount(ring.ravel(), spec.ravel())[1:128] / np.bincount(ring.ravel())[1:128]
    assert power.min() > 1e-6 * power.max()
    assert power[100:128].sum() > 1e-4 * power.sum()


def test_generation_is_byte_reproducible(tmp_path, tiny):
    for name in ("a", "b"):
        train, test = generate_dose(tiny.design, tiny.generate, "1e3")
        save_dataset(tmp_path / name / "patched_train.npz", train)
        save_dataset(tmp_path / name / "patched_test.npz", test)
    for part in ("patched_train.npz", "patched_test.npz"):
        assert (tmp_path / "a" / part).read_bytes() == (tmp_path / "b" / part).read_bytes()


def test_doses_share_object_and_scan_but_not_noise(tiny, splits):
    low, _ = generate_dose(tiny.design, tiny.generate, "1e3")
    high, _ = splits
    np.testing.assert_array_equal(low.xcoords, high.xcoords)
    np.testing.assert_array_equal(low.objectGuess, high.objectGuess)
    assert low.metadata["nphotons"] == 1e3


def test_a_base_sample_replaces_probe_and_object(tmp_path, monkeypatch, tiny):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inputs").mkdir()
    N = tiny.design.N
    probe = physics.make_probe(N, aperture=0.5, central_stop=0.0, defocus=2.0) * 3.0
    obj = make_object(100, tiny.generate.object, np.random.default_rng(5))
    np.savez(tmp_path / "inputs" / "real.npz", probeGuess=probe.astype(np.complex128), objectGuess=obj)
    gen = dataclasses.replace(tiny.generate, base_sample="inputs/real.npz")
    train, test = generate_dose(tiny.design, gen, "1e3")
    np.testing.assert_allclose(train.probeGuess, physics.normalise_probe(probe), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(train.objectGuess, obj / np.abs(obj).max(), rtol=1e-6)
    source = train.metadata["source"]
    assert source["source"] == "base_sample" and len(source["sha256"]) == 64
    assert source["geometry"]["pixel_size_m"] == tiny.generate.geometry.pixel_size_m  # an NPZ has none
    assert max(train.xcoords.max(), test.xcoords.max()) <= 100 - N / 2
    save_dataset(tmp_path / "t.npz", train)
    assert load_dataset(tmp_path / "t.npz").metadata["source"]["path"] == "inputs/real.npz"


def test_generate_stage_refuses_a_bad_base_sample_in_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "inputs").mkdir()
    obj = np.ones((200, 200), np.complex64)
    obj[5, 7] = np.nan
    np.savez(tmp_path / "inputs" / "nan.npz", probeGuess=physics.make_probe(32, aperture=0.4, central_stop=0.3,
                                                                            defocus=3.0), objectGuess=obj)
    raw = read_params(profile_params("tiny"))
    raw["generate"]["base_sample"] = "inputs/nan.npz"
    write_params(raw, tmp_path / "params.yaml")
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "generate.py"), "--dose", "1e3", "--out", "out"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: inputs/nan.npz: object: 1 non-finite values (NaN or inf); replace them (e.g. by the object's "
        "border value) or crop them away")
    assert not (tmp_path / "out").exists()
