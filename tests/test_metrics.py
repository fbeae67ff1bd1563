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
    dy, dx = metrics.register(moved, truth, region, max_shift=3.0)
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
    assert metrics.component_metrics(out.phase, out.truth_phase, smooth_sigma=1.0)[0]["ms_ssim"] > 0.99
    assert metrics.component_metrics(np.angle(recon[region]), out.truth_phase, smooth_sigma=1.0)[0]["ms_ssim"] < 0.9


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
    s = 2.5  # incident photons per exposure: s^2 * sum|P|^2 = 6.25 * 16 = 100
    f = metrics.fluence(probe, x, y, (80, 80), intensity_scale=s)
    assert f.sum() == pytest.approx(3 * 100.0)
    assert f[30, 30] == pytest.approx(2 * 100.0 / 16)  # two exposures over 16 lit pixels
    assert metrics.shot_noise_phase_bound(np.full(10, 100.0)) == pytest.approx(1 / (2 * 10))
    assert metrics.shot_noise_phase_bound(np.array([100.0, 0.0])) == math.inf


# ------------------------------------------------------------ issue 15: scoring that cannot mislead
def test_a_40_pixel_shift_is_a_failed_registration_not_a_registered_field():
    truth = smooth_field((192, 192), seed=5)
    moved = metrics.fourier_shift(truth, (0.0, 40.0))
    region = (slice(40, 152), slice(40, 152))
    with pytest.raises(metrics.RegistrationFailed, match="max_shift_px = 3"):
        metrics.register(moved, truth, region, max_shift=3.0)
    out = metrics.align(moved, truth, region, max_shift=3.0)
    assert out.registration.startswith("failed") and out.shift_px == (0.0, 0.0)
    # scored as it is, unshifted: no wrapped-around field that happens to match
    unshifted = metrics.component_metrics(out.phase, out.truth_phase, smooth_sigma=1.0)[0]["ms_ssim"]
    assert unshifted < 0.5
    small = metrics.align(metrics.fourier_shift(truth, (0.4, -1.2)), truth, region, max_shift=3.0)
    assert small.registration == "ok" and small.shift_px[1] == pytest.approx(1.2, abs=0.05)


def test_an_frc_dip_in_the_first_rings_is_not_the_resolution():
    freq = np.arange(1, 65) / 128
    corr = np.full(64, 0.9)
    corr[0:2] = (0.43, 0.36)  # a dip in rings 1-2: patch-to-patch offsets, not resolution
    corr[16:] = 0.2  # the true crossing: ring 17 onwards stays below
    pixels = 2 * np.pi * np.arange(1, 65)  # about 2πk pixels in ring k
    res = metrics.frc_resolution(freq, corr, pixels, 0.5)
    assert freq[15] < res <= freq[16]
    corr[16:26] = 0.9
    corr[20:22] = 0.3  # a 2-ring excursion below 0.5 before the sustained one does not count either
    assert metrics.frc_resolution(freq, corr, pixels, 0.5) > freq[25]
    assert metrics.frc_resolution(freq, np.full(64, 0.2), pixels, 0.5) == freq[2]  # below from the first usable ring


def test_frc_reports_low_frequency_agreement_separately():
    truth = np.angle(smooth_field(cutoff=0.25))
    h, w = truth.shape
    yy, xx = np.mgrid[0:h, 0:w]
    # a large-scale error only (ring 1), as patch-to-patch offsets would make
    offset = truth + 3 * (np.sin(2 * np.pi * yy / h) + np.sin(2 * np.pi * xx / w + 1))
    good, bad = metrics.frc(truth + 1e-3, truth), metrics.frc(offset, truth)
    assert bad.low_frequency < good.low_frequency - 0.05
    assert bad.resolution == good.resolution == 0.5  # the fine detail is all there


def test_both_components_get_the_same_smoothing_treatment():
    field = smooth_field((160, 160), seed=7)
    rng = np.random.default_rng(8)
    noisy = field * np.exp(1j * 0.3 * rng.standard_normal(field.shape)) * (1 + 0.1 * rng.standard_normal(field.shape))
    out = {}
    for comp, pred, ref in (("amplitude", np.abs(noisy), np.abs(field)), ("phase", np.angle(noisy), np.angle(field))):
        out[comp] = metrics.component_metrics(pred, ref, smooth_sigma=1.0)[0]
        assert out[comp]["ms_ssim"] == pytest.approx(metrics.ms_ssim(pred, ref))  # headline: unsmoothed
        assert out[comp]["ms_ssim_smoothed"] == pytest.approx(metrics.ms_ssim(pred, ref, 1.0))
        assert out[comp]["ms_ssim_smoothed"] > out[comp]["ms_ssim"]  # smoothing flatters noise, in both
    assert set(out["amplitude"]) == set(out["phase"]) == set(metrics.COMPONENT_METRICS)


def test_fixed_frame_metrics_of_a_shifted_copy_are_worse_than_aligned_ones():
    truth = smooth_field((192, 192), seed=9, cutoff=0.2)
    moved = metrics.fourier_shift(truth, (0.0, 0.3))
    region = (slice(40, 152), slice(40, 152))
    scores = {}
    for level in metrics.ALIGNMENTS:
        al = metrics.align(moved, truth, region, level=level, max_shift=3.0)
        scores[level] = metrics.component_metrics(al.phase, al.truth_phase, smooth_sigma=1.0)[0]
    assert scores["aligned"]["ms_ssim"] > 0.99
    assert scores["fixed-frame"]["ms_ssim"] < scores["aligned"]["ms_ssim"] - 0.005
    assert scores["fixed-frame"]["mae"] > 3 * scores["aligned"]["mae"]
    ff = metrics.align(moved, truth, region, level="fixed-frame", max_shift=3.0)
    assert ff.shift_px == (0.0, 0.0) and ff.phase_plane[1:] == (0.0, 0.0)


def test_the_fluence_of_a_transparent_object_is_the_incident_photons_of_every_exposure():
    from fly64study.physics import diffraction_amplitude, make_probe
    import torch

    probe = make_probe(32, aperture=0.4, central_stop=0.3, defocus=3.0)
    s = 7.0
    counts = (s * diffraction_amplitude(torch.ones(1, 32, 32, dtype=torch.complex64),
                                        torch.from_numpy(probe))).double() ** 2
    incident = metrics.incident_photons(probe, s)
    assert float(counts.sum()) == pytest.approx(incident, rel=1e-4)  # what a transparent object sends to the detector
    x, y = np.array([40.0, 60.0, 61.5]), np.array([40.0, 50.0, 70.0])
    f = metrics.fluence(probe, x, y, (128, 128), intensity_scale=s)
    assert f.sum() == pytest.approx(3 * incident)
