"""Physics properties: Parseval, phase invariance, the probe's optics, dose and Poisson statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fly64study import physics
from fly64study.simulate import make_object, simulate_diffraction, extract_patches, random_scan


def test_parseval_orthonormal_fft():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 32, 32, dtype=torch.complex64, generator=g)
    energy_in = (x.abs() ** 2).sum(dim=(-2, -1))
    energy_out = (physics.far_field(x).abs() ** 2).sum(dim=(-2, -1))
    torch.testing.assert_close(energy_out, energy_in, rtol=1e-5, atol=0)


def test_amplitude_is_invariant_to_a_global_phase():
    rng = np.random.default_rng(1)
    obj = torch.from_numpy(np.exp(1j * rng.random((3, 32, 32))).astype(np.complex64))
    probe = torch.from_numpy(physics.make_probe(32, aperture=0.4, central_stop=0.3, defocus=3.0))
    a = physics.diffraction_amplitude(obj, probe)
    b = physics.diffraction_amplitude(obj * np.exp(1.234j), probe)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_zero_frequency_is_at_the_centre():
    N = 32
    plane = torch.ones(N, N, dtype=torch.complex64)
    amp = physics.diffraction_amplitude(plane, plane)
    assert np.unravel_index(int(amp.argmax()), amp.shape) == (N // 2, N // 2)
    assert float(amp[N // 2, N // 2]) == pytest.approx(N, rel=1e-6)  # orthonormal: sqrt(N*N)


def test_probe_is_optical_not_a_gaussian():
    N = 64
    probe = physics.make_probe(N, aperture=0.4, central_stop=0.3, defocus=6.0)
    assert probe.dtype == np.complex64
    assert np.sum(np.abs(probe.astype(np.complex128)) ** 2) == pytest.approx((N / 2) ** 2, rel=1e-5)
    # its far field is the annular pupil: zero outside the aperture and inside the central stop
    pupil = np.abs(np.fft.fft2(np.fft.ifftshift(probe)))
    mask = physics.pupil(N, 0.4, 0.3) > 0
    assert pupil[~mask].max() < 1e-3 * pupil[mask].max()
    # rings: the azimuthally averaged intensity is not monotonic in radius
    intensity = np.abs(probe) ** 2
    yy, xx = np.indices(intensity.shape)
    r = np.hypot(yy - N / 2, xx - N / 2).astype(int)
    profile = np.bincount(r.ravel(), intensity.ravel()) / np.bincount(r.ravel())
    assert np.any(np.diff(profile[: N // 2]) > 0)
    # defocus curves the phase: across the core it changes by more than a radian
    core = intensity > 0.2 * intensity.max()
    phase = np.angle(probe[core] * np.conj(probe[N // 2, N // 2]))
    assert np.ptp(phase) > 1.0
    # the 90% diameter leaves the probe inside half the window (oversampling >= 2)
    D = physics.probe_diameter(probe)
    assert 15 < D <= N / 2


def test_probe_diameter_of_a_uniform_disc():
    N, R = 256, 60.0
    yy, xx = np.indices((N, N))
    disc = (np.hypot(yy - N / 2, xx - N / 2) <= R).astype(np.complex64)
    assert physics.probe_diameter(disc) == pytest.approx(2 * R * np.sqrt(0.9), rel=0.01)


@pytest.mark.parametrize("dose", [1e3, 1e4, 1e5])
def test_mean_counts_per_pattern_equal_the_dose(dose):
    rng = np.random.default_rng(7)
    N = 32
    obj = make_object(128, _object_model(), rng)
    x, y = random_scan(400, obj.shape, N, rng)
    probe = physics.make_probe(N, aperture=0.4, central_stop=0.3, defocus=3.0)
    meas = simulate_diffraction(extract_patches(obj, x, y, N), probe, dose, np.random.default_rng(8))
    counts = (meas.diffraction.astype(np.float64) * meas.intensity_scale) ** 2
    assert counts.sum(axis=(1, 2)).mean() == pytest.approx(dose, rel=0.02)
    assert meas.mean_counts == pytest.approx(dose, rel=0.02)
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-2 * max(1.0, dose / 1e4))  # integer counts


def test_poisson_variance_equals_mean():
    expected = np.linspace(0.5, 50.0, 400).reshape(20, 20)
    rng = np.random.default_rng(3)
    draws = np.stack([physics.poisson_counts(expected, rng) for _ in range(4000)])
    np.testing.assert_allclose(draws.mean(axis=0), expected, rtol=0.05, atol=0.05)
    np.testing.assert_allclose(draws.var(axis=0), expected, rtol=0.12, atol=0.1)
    # pooled over pixels the index of dispersion is 1 to well under a percent
    assert (draws.var(axis=0).sum() / expected.sum()) == pytest.approx(1.0, abs=0.01)


def test_poisson_refuses_negative_expectation():
    with pytest.raises(ValueError, match="non-negative"):
        physics.poisson_counts(np.array([-1.0]), np.random.default_rng(0))


def _object_model():
    from fly64study.design import ObjectModel

    return ObjectModel(amplitude_min=0.6, phase_range=2.0, particle_density=2.0, particle_radius_max=6.0)
