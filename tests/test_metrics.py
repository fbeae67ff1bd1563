"""Phase G metrics and alignment, each against an answer known in advance."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fly64study import metrics


def smooth_field(shape=(160, 160), seed=0, cutoff=0.08) -> np.ndarray:
    """A periodic complex object with features a few pixels wide: amplitude in [0.6, 1], phase ±1 rad."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :]
    lowpass = np.exp(-(fx**2 + fy**2) / (2 * cutoff**2))
    out = []
    for _ in range(2):
        x = np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * lowpass).real
        out.append((x - x.min()) / (x.max() - x.min()))
    return ((0.6 + 0.4 * out[0]) * np.exp(1j * (2 * out[1] - 1))).astype(np.complex128)


def test_identical_images_score_perfectly():
    truth = np.abs(smooth_field())
    scores, curve = metrics.component_metrics(truth.copy(), truth, smooth_sigma=1.0)
    assert scores["ms_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ssim"] == pytest.approx(1.0, abs=1e-9)
    assert scores["mae"] == 0 and scores["mse"] == 0
    assert scores["psnr"] == math.inf
    np.testing.assert_allclose(curve.correlation, 1.0, atol=1e-9)
    assert scores["frc_resolution"] == 0.5  # never drops below 0.5: Nyquist


def test_psnr_of_a_known_noise_level_matches_the_formula():
    rng = np.random.default_rng(3)
    truth = rng.random((256, 256))
    truth[0, 0], truth[0, 1] = 0.0, 1.0  # data range exactly 1
    sigma = 0.05
    noisy = truth + rng.normal(0, sigma, truth.shape)
    assert metrics.psnr(noisy, truth) == pytest.approx(10 * math.log10(1.0 / sigma**2), abs=0.1)
    # the data range is the truth's, never a fixed 255: halving the range costs 6 dB
    assert metrics.psnr(noisy / 2, truth / 2) == pytest.approx(metrics.psnr(noisy, truth), abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_frc_of_independent_noise_falls_below_half_at_once(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((128, 128)), rng.standard_normal((128, 128))
    curve = metrics.frc(a, b)
    # the first rings hold a handful of pixels, so one of them may sit near 0.5 by chance;
    # the curve crosses 0.5 within the first three and stays near zero on average
    assert curve.resolution <= curve.frequency[2]
    assert np.mean(np.abs(curve.correlation)) < 0.15 and abs(np.mean(curve.correlation)) < 0.05
    assert curve.frequency[0] == pytest.approx(1 / 128) and curve.frequency[-1] == pytest.approx(0.5)
    assert curve.half_bit[0] > curve.half_bit[-1]  # the 1/2-bit threshold falls as rings hold more pixels


def test_frc_resolution_drops_with_blur():
    truth = np.angle(smooth_field(cutoff=0.25))
    sharp = metrics.frc(truth + 0.02 * np.random.default_rng(1).standard_normal(truth.shape), truth)
    from scipy import ndimage
    blurred = metrics.frc(ndimage.gaussian_filter(truth, 2.0), truth)
    assert blurred.resolution < sharp.resolution


def test_a_known_subpixel_shift_is_recovered():
    truth = smooth_field((192, 192), seed=2)
    moved = metrics.fourier_shift(truth, (0.37, -1.62))
    region = (slice(32, 160), slice(32, 160))  # a crop: the registration must not rely on periodic edges
    dy, dx = metrics.register(moved, truth, region)
    assert abs(dy + 0.37) < 0.05 and abs(dx - 1.62) < 0.05


def test_align_removes_shift_phase_offset_ramp_and_amplitude_scale():
    truth = smooth_field((192, 192), seed=4)
    yy, xx = np.mgrid[0:192, 0:192]
    recon = 1.7 * metrics.fourier_shift(truth, (-0.6, 0.45)) * np.exp(1j * (0.9 + 0.004 * yy - 0.006 * xx))
    region = (slice(40, 152), slice(30, 170))
    out = metrics.align(recon, truth, region)
    assert abs(out.shift_px[0] - 0.6) < 0.05 and abs(out.shift_px[1] + 0.45) < 0.05
    _, ramp_y, ramp_x = out.phase_plane
    assert ramp_y == pytest.approx(0.004, abs=2e-4) and ramp_x == pytest.approx(-0.006, abs=2e-4)
    assert out.amplitude_scale == pytest.approx(1 / 1.7, rel=1e-2)
    assert out.phase.shape == out.amplitude.shape == (112, 140)
    assert np.sqrt(np.mean((out.phase - out.truth_phase) ** 2)) < 0.01
    assert np.mean(np.abs(out.amplitude - out.truth_amplitude)) < 0.01
    # the aligned copy scores near-perfectly; the raw one does not
    assert metrics.component_metrics(out.phase, out.truth_phase)[0]["ms_ssim"] > 0.99
    assert metrics.component_metrics(np.angle(recon[region]), out.truth_phase)[0]["ms_ssim"] < 0.9


def test_ms_ssim_window_fits_the_crop():
    assert metrics.ms_ssim_window((400, 320)) == 11
    assert metrics.ms_ssim_window((160, 320)) == 9  # 5 levels need side > (win - 1) * 16
    assert metrics.ms_ssim_window((48, 96)) == 3
    with pytest.raises(ValueError, match="too small"):
        metrics.ms_ssim_window((32, 96))


def test_ms_ssim_orders_degradations():
    truth = np.angle(smooth_field())
    rng = np.random.default_rng(0)
    light = metrics.ms_ssim(truth + 0.05 * rng.standard_normal(truth.shape), truth)
    heavy = metrics.ms_ssim(truth + 0.3 * rng.standard_normal(truth.shape), truth)
    assert 1 > light > heavy > 0


def test_scanned_area_is_the_bounding_box_of_the_positions():
    rows, cols = metrics.scanned_area(np.array([40.2, 100.9]), np.array([50.5, 70.0]), (128, 128))
    assert (rows.start, rows.stop, cols.start, cols.stop) == (51, 71, 41, 101)


def test_fluence_sums_every_exposure_and_gives_the_shot_noise_bound():
    probe = np.zeros((16, 16), complex)
    probe[6:10, 6:10] = 1.0
    x = np.array([30.0, 30.0, 50.0])
    y = np.array([30.0, 30.0, 40.0])
    f = metrics.fluence(probe, x, y, (80, 80), nphotons=1000.0)
    assert f.sum() == pytest.approx(3000.0)
    assert f[30, 30] == pytest.approx(2 * 1000.0 / 16)  # two exposures over 16 lit pixels
    assert metrics.shot_noise_phase_bound(np.full(10, 100.0)) == pytest.approx(1 / (2 * 10))
    assert metrics.shot_noise_phase_bound(np.array([100.0, 0.0])) == math.inf
