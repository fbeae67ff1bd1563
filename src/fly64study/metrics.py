"""Reconstruction error metrics against the ground truth.

Patch metrics (phase E's learning check): errors weighted by the probe intensity |P|^2, since
a pattern says nothing about the object where the probe does not reach, after removing each
patch's global phase (unobservable in far-field data).

Field metrics (phase G): a whole reconstructed object is aligned to the ground truth at two
levels (:func:`align`: ``aligned`` and ``fixed-frame``), then each component (amplitude, phase)
is scored the same way with MS-SSIM, SSIM, MAE, MSE, PSNR and FRC (:func:`component_metrics`),
all with the ground truth's data range; dose is also expressed as incident photons per object
pixel (:func:`fluence`), beside the shot-noise limit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytorch_msssim
import torch
from scipy import ndimage
from skimage import registration
from skimage.metrics import structural_similarity


def align_global_phase(pred: np.ndarray, truth: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``pred`` times the phase factor that best matches ``truth`` under ``weight`` (per patch).

    pred, truth : (..., N, N) complex; weight : (N, N) real >= 0.
    """
    z = np.sum(weight * truth * np.conj(pred), axis=(-2, -1), keepdims=True)
    return pred * np.exp(1j * np.angle(z))


def weighted_phase_rmse(pred: np.ndarray, truth: np.ndarray, weight: np.ndarray) -> float:
    """Mean over patches of the |P|^2-weighted RMS phase difference, radians, after global phase alignment.

    The phase difference is wrapped to (-pi, pi].
    """
    diff = np.angle(align_global_phase(pred, truth, weight) * np.conj(truth))
    per_patch = np.sqrt(np.sum(weight * diff**2, axis=(-2, -1)) / np.sum(weight))
    return float(np.mean(per_patch))


def weighted_amplitude_rmse(pred: np.ndarray, truth: np.ndarray, weight: np.ndarray) -> float:
    """Mean over patches of the |P|^2-weighted RMS amplitude difference, after scaling each
    predicted patch to the truth's weighted mean amplitude."""
    a, b = np.abs(pred), np.abs(truth)
    wsum = np.sum(weight)
    mean_a = np.sum(weight * a, axis=(-2, -1), keepdims=True) / wsum
    mean_b = np.sum(weight * b, axis=(-2, -1), keepdims=True) / wsum
    diff = a * mean_b / np.maximum(mean_a, 1e-12) - b
    return float(np.mean(np.sqrt(np.sum(weight * diff**2, axis=(-2, -1)) / wsum)))


def patch_errors(pred: np.ndarray, truth: np.ndarray, probe: np.ndarray) -> dict:
    """Phase and amplitude errors of ``pred`` and, for reference, of a flat object (transmission 1)."""
    weight = np.abs(probe) ** 2
    flat = np.ones_like(truth)
    return {
        "phase_rmse_rad": weighted_phase_rmse(pred, truth, weight),
        "flat_phase_rmse_rad": weighted_phase_rmse(flat, truth, weight),
        "amplitude_rmse": weighted_amplitude_rmse(pred, truth, weight),
        "flat_amplitude_rmse": weighted_amplitude_rmse(flat, truth, weight),
        "n_patches": int(truth.shape[0]),
    }


# ------------------------------------------------------------------ fields: alignment (phase G)
# A reconstruction is compared with the ground-truth object only after removing what far-field
# ptychography cannot determine or what a method may legitimately differ in: a sub-pixel shift,
# a global phase and a linear phase ramp, and the amplitude's overall scale.

ALIGNMENTS = ("aligned", "fixed-frame")


class RegistrationFailed(Exception):
    """The shift estimate exceeds the bound: a failed registration, not a misregistration."""


@dataclass(frozen=True)
class Aligned:
    """A reconstruction aligned to the ground truth on the scanned area, as amplitude and phase."""

    amplitude: np.ndarray  # (h, w), scaled to the truth's mean amplitude
    phase: np.ndarray  # (h, w) radians, unwrapped relative to the truth (truth phase + wrapped difference)
    truth_amplitude: np.ndarray
    truth_phase: np.ndarray
    level: str  # "aligned" (shift, offset, ramp and scale removed) or "fixed-frame" (offset and scale only)
    shift_px: tuple[float, float]  # (dy, dx) applied to the reconstruction ((0, 0) in the fixed frame)
    phase_plane: tuple[float, float, float]  # removed (offset rad, rad/px along y, rad/px along x)
    amplitude_scale: float  # factor applied to the reconstruction's amplitude
    registration: str = "ok"  # "ok", or why the estimated shift was refused (then no shift is applied)


def scanned_area(xcoords: np.ndarray, ycoords: np.ndarray, shape: tuple[int, int]) -> tuple[slice, slice]:
    """(rows, cols) of the bounding box of the scan positions (patch centres): pixels every method saw."""
    y0, y1 = int(np.ceil(ycoords.min())), int(np.floor(ycoords.max())) + 1
    x0, x1 = int(np.ceil(xcoords.min())), int(np.floor(xcoords.max())) + 1
    return slice(max(y0, 0), min(y1, shape[0])), slice(max(x0, 0), min(x1, shape[1]))


def fourier_shift(image: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """``image`` moved by (dy, dx) pixels (band-limited, periodic): out(r) = image(r - shift)."""
    return np.fft.ifftn(ndimage.fourier_shift(np.fft.fftn(image), shift)).astype(np.result_type(image, np.complex64))


def register(recon: np.ndarray, truth: np.ndarray, region: tuple[slice, slice], *, max_shift: float,
             upsample: int = 100, iterations: int = 5) -> tuple[float, float]:
    """The (dy, dx) shift that best moves ``recon`` onto ``truth`` within ``region`` (to 1/upsample px).

    Cross-correlation of a crop is biased by content entering and leaving it, in proportion to
    the shift; so the whole field is moved by the estimate and the residual measured again,
    until it is below the precision. Fields are compared as complex images with their means
    removed, so a flat background does not pull the peak.

    Probe and positions are known, so a real misregistration is at most a few pixels; and a
    Fourier shift is periodic, so a large one wraps unseen and other pixels into the crop.
    An estimate beyond ``max_shift`` (pixels, either axis) raises :class:`RegistrationFailed`.
    """
    total = np.zeros(2)
    a = truth[region] - truth[region].mean()
    for _ in range(iterations):
        b = (fourier_shift(recon, tuple(total)) if total.any() else recon)[region]
        step, _, _ = registration.phase_cross_correlation(a, b - b.mean(), upsample_factor=upsample,
                                                          normalization=None)
        total += step
        if np.max(np.abs(total)) > max_shift:
            raise RegistrationFailed(f"estimated shift (dy, dx) = ({total[0]:.2f}, {total[1]:.2f}) px exceeds "
                                     f"design.metrics.max_shift_px = {max_shift:g}")
        if np.max(np.abs(step)) < 1.0 / upsample:
            break
    return float(total[0]), float(total[1])


def remove_phase_plane(recon: np.ndarray, truth: np.ndarray, iterations: int = 3, *,
                       ramp: bool = True) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``recon`` with the offset (and, with ``ramp``, the linear ramp) of its phase difference to
    ``truth`` removed.

    The plane is a least-squares fit to the wrapped difference, weighted by the truth's amplitude
    and repeated on the residual so that a ramp of up to about 1 rad across the field converges.
    """
    h, w = truth.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy -= (h - 1) / 2
    xx -= (w - 1) / 2
    A = np.stack([np.ones(h * w), yy.ravel(), xx.ravel()], axis=1)
    if not ramp:
        A = A[:, :1]
    wt = np.abs(truth).ravel().astype(np.float64)
    total = np.zeros(A.shape[1])
    out = recon.astype(np.complex128)
    for _ in range(iterations):
        diff = np.angle(out * np.conj(truth)).ravel()
        coef, *_ = np.linalg.lstsq(A * wt[:, None], diff * wt, rcond=None)
        out = out * np.exp(-1j * (A @ coef).reshape(h, w))
        total += coef
    if not ramp:
        return out, (float(total[0]), 0.0, 0.0)
    # report the offset at pixel (0, 0) of the crop, like the ramp: plane(y, x) = c0 + c1 y + c2 x
    offset = total[0] - total[1] * (h - 1) / 2 - total[2] * (w - 1) / 2
    return out, (float(offset), float(total[1]), float(total[2]))


def align(recon: np.ndarray, truth: np.ndarray, region: tuple[slice, slice], *, level: str = "aligned",
          max_shift: float = 3.0) -> Aligned:
    """``recon`` (a full object field) against ``truth`` on ``region``, at one of two levels.

    ``aligned``: registered (sub-pixel shift, bounded by ``max_shift``), phase offset and ramp
    removed, amplitude scaled to the truth's mean. ``fixed-frame``: only the phase offset (the
    one quantity far-field data cannot fix) and the amplitude scale are removed; probe and
    positions are known here, so a shift or a ramp stays in as an error of the reconstruction.
    A refused registration keeps the field unshifted and says why in ``registration``.
    """
    if level not in ALIGNMENTS:
        raise ValueError(f"alignment level {level!r}: expected one of {ALIGNMENTS}")
    z = np.vdot(recon[region], truth[region])  # global phase first: registration then sees like with like
    field = recon * np.exp(1j * np.angle(z))
    shift, status = (0.0, 0.0), "ok"
    if level == "aligned":
        try:
            shift = register(field, truth, region, max_shift=max_shift)
        except RegistrationFailed as err:
            status = f"failed: {err}"
    if shift != (0.0, 0.0):
        field = fourier_shift(field, shift)
    field = field[region]
    t = truth[region]
    field, plane = remove_phase_plane(field, t, ramp=level == "aligned")
    amp = np.abs(field)
    scale = float(np.mean(np.abs(t)) / max(np.mean(amp), 1e-12))
    return Aligned(
        amplitude=amp * scale,
        phase=np.angle(t) + np.angle(field * np.conj(t)),
        truth_amplitude=np.abs(t).astype(np.float64),
        truth_phase=np.angle(t).astype(np.float64),
        level=level,
        shift_px=shift,
        phase_plane=plane,
        amplitude_scale=scale,
        registration=status,
    )


# ------------------------------------------------------------------- fields: image metrics
MS_SSIM_LEVELS = 5  # pytorch-msssim's default weights: Wang, Simoncelli & Bovik 2003


def psnr(pred: np.ndarray, truth: np.ndarray) -> float:
    """10 log10(range² / MSE) with the truth's data range (inf for identical images)."""
    mse = float(np.mean((pred - truth) ** 2))
    rng = float(truth.max() - truth.min())
    return math.inf if mse == 0 else 10 * math.log10(rng**2 / mse)


def ssim(pred: np.ndarray, truth: np.ndarray) -> float:
    """SSIM (Wang 2004: 11-tap Gaussian sigma 1.5, population covariance) with the truth's range."""
    return float(structural_similarity(truth, pred, data_range=float(truth.max() - truth.min()),
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def ms_ssim_window(shape: tuple[int, int]) -> int:
    """The largest odd Gaussian window (at most 11, Wang's) that fits 5 levels: side > (win - 1) * 16."""
    win = 11
    while win >= 3 and min(shape) <= (win - 1) * 2 ** (MS_SSIM_LEVELS - 1):
        win -= 2
    if win < 3:
        raise ValueError(f"an image of {shape[0]}x{shape[1]} px is too small for {MS_SSIM_LEVELS}-level MS-SSIM "
                         f"(each side must exceed 32 px)")
    return win


def ms_ssim(pred: np.ndarray, truth: np.ndarray, smooth_sigma: float = 0.0) -> float:
    """5-level MS-SSIM (Wang 2003 weights) of ``pred`` against ``truth``, both mapped by the truth's
    range to [0, 1] (data range 1), after an optional Gaussian smoothing of both by ``smooth_sigma`` px."""
    if smooth_sigma > 0:
        pred, truth = ndimage.gaussian_filter(pred, smooth_sigma), ndimage.gaussian_filter(truth, smooth_sigma)
    lo, rng = float(truth.min()), float(truth.max() - truth.min())
    x = torch.from_numpy(((pred - lo) / rng).astype(np.float32))[None, None]
    y = torch.from_numpy(((truth - lo) / rng).astype(np.float32))[None, None]
    return float(pytorch_msssim.ms_ssim(x, y, data_range=1.0, win_size=ms_ssim_window(truth.shape), win_sigma=1.5))


# The resolution is where the FRC falls below the threshold and stays there: a dip in the
# lowest rings is low-frequency (patch-to-patch offset) error, reported on its own, not resolution.
FRC_SUSTAIN_RINGS = 3  # the curve must stay below the threshold this many rings in a row
FRC_MIN_RING_PIXELS = 16  # rings with fewer Fourier pixels (the first two) are too noisy to decide a crossing
FRC_LOW_FREQUENCY = 0.05  # cycles/px: "low-frequency agreement" is the mean FRC of the rings up to here


@dataclass(frozen=True)
class FRC:
    frequency: np.ndarray  # ring centres, cycles per pixel (ring k of an L-px image: k / L)
    correlation: np.ndarray
    half_bit: np.ndarray  # the 1/2-bit threshold curve (van Heel & Schatz 2005)
    pixels: np.ndarray  # Fourier pixels per ring
    resolution: float  # first sustained crossing of the threshold, cycles/px (Nyquist 0.5 if none)
    low_frequency: float  # mean correlation of the rings at or below FRC_LOW_FREQUENCY
    threshold: float


def frc_resolution(freq: np.ndarray, corr: np.ndarray, pixels: np.ndarray, threshold: float) -> float:
    """The first frequency where ``corr`` falls below ``threshold`` and stays below it for
    FRC_SUSTAIN_RINGS rings, among rings with at least FRC_MIN_RING_PIXELS pixels; interpolated
    linearly from the ring before. A curve that never does gives Nyquist (0.5)."""
    usable = np.nonzero(pixels >= FRC_MIN_RING_PIXELS)[0]
    below = corr < threshold
    for k in usable:
        run = below[k:k + FRC_SUSTAIN_RINGS]
        if run.all() and (len(run) == FRC_SUSTAIN_RINGS or k + len(run) == len(corr)):
            if k == usable[0]:
                return float(freq[k])  # below from the first usable ring on
            t = (corr[k - 1] - threshold) / (corr[k - 1] - corr[k])
            return float(freq[k - 1] + t * (freq[k] - freq[k - 1]))
    return 0.5


def frc(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> FRC:
    """Fourier ring correlation of two real images of one shape, rings 1 .. L/2 (L = shorter side).

    Each image is multiplied by a Hann window (so the crop's edges do not add a correlated cross
    to the spectrum) around its window-weighted mean (so no DC term leaks into the first rings).
    The resolution is the first sustained crossing (:func:`frc_resolution`).
    """
    h, w = truth.shape
    L = min(h, w)
    window = np.hanning(h)[:, None] * np.hanning(w)[None, :]
    fa = np.fft.fft2((pred - np.sum(pred * window) / np.sum(window)) * window)
    fb = np.fft.fft2((truth - np.sum(truth * window) / np.sum(window)) * window)
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    ring = np.rint(radius * L).astype(np.int64).ravel()
    n_rings = L // 2
    keep = (ring >= 1) & (ring <= n_rings)
    idx = ring[keep] - 1

    def ring_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(idx, weights=values.ravel()[keep], minlength=n_rings)

    cross = ring_sum((fa * np.conj(fb)).real)
    pa, pb = ring_sum(np.abs(fa) ** 2), ring_sum(np.abs(fb) ** 2)
    corr = cross / np.sqrt(np.maximum(pa * pb, 1e-300))
    count = np.bincount(idx, minlength=n_rings).astype(np.float64)
    half_bit = (0.2071 + 1.9102 / np.sqrt(count)) / (1.2071 + 0.9102 / np.sqrt(count))
    freq = np.arange(1, n_rings + 1) / L
    low = corr[freq <= FRC_LOW_FREQUENCY]
    return FRC(frequency=freq, correlation=corr, half_bit=half_bit, pixels=count,
               resolution=frc_resolution(freq, corr, count, threshold),
               low_frequency=float(low.mean()) if low.size else float(corr[0]), threshold=threshold)


COMPONENT_METRICS = ("ms_ssim", "ms_ssim_smoothed", "ssim", "mae", "mse", "rmse", "psnr", "frc_resolution",
                     "frc_low_frequency")


def component_metrics(pred: np.ndarray, truth: np.ndarray, *, smooth_sigma: float,
                      frc_threshold: float = 0.5) -> tuple[dict[str, float], FRC]:
    """The scores of one component (amplitude or phase), each computed the same way for both:
    MS-SSIM unsmoothed (the headline) and after Gaussian smoothing of both images by
    ``smooth_sigma`` px (``ms_ssim_smoothed``), SSIM, MAE, MSE, RMSE, PSNR, the FRC resolution
    and the low-frequency FRC agreement."""
    if not float(truth.max() - truth.min()) > 0:
        raise ValueError("the ground truth is constant over the crop: its data range is 0, so no metric is defined")
    err = pred - truth
    curve = frc(pred, truth, frc_threshold)
    return {
        "ms_ssim": ms_ssim(pred, truth),
        "ms_ssim_smoothed": ms_ssim(pred, truth, smooth_sigma),
        "ssim": ssim(pred, truth),
        "mae": float(np.mean(np.abs(err))),
        "mse": float(np.mean(err**2)),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "psnr": psnr(pred, truth),
        "frc_resolution": curve.resolution,
        "frc_low_frequency": curve.low_frequency,
    }, curve


# ------------------------------------------------------------------------ dose and its limit
def incident_photons(probe: np.ndarray, intensity_scale: float) -> float:
    """Photons incident per exposure, s²·Σ|P|²: the counts a transparent object would give
    (the far field is an orthonormal FFT, so Parseval carries Σ|P|² to the detector). The dose
    label is the mean DETECTED count per pattern, lower where the object absorbs."""
    return float(intensity_scale**2 * np.sum(np.abs(probe) ** 2))


def fluence(probe: np.ndarray, xcoords: np.ndarray, ycoords: np.ndarray, shape: tuple[int, int],
            intensity_scale: float) -> np.ndarray:
    """Incident photons per object pixel summed over every exposure: each exposure's
    s²·Σ|P|² photons (:func:`incident_photons`) spread as |P|² / Σ|P|², i.e. s²|P|², at its
    position (nearest pixel)."""
    N = probe.shape[0]
    share = intensity_scale**2 * np.abs(probe).astype(np.float64) ** 2
    padded = np.zeros((shape[0] + N, shape[1] + N))
    for x, y in zip(xcoords, ycoords):
        r, c = int(np.floor(y - N / 2 + 0.5)) + N // 2, int(np.floor(x - N / 2 + 0.5)) + N // 2
        padded[r:r + N, c:c + N] += share
    return padded[N // 2:N // 2 + shape[0], N // 2:N // 2 + shape[1]]


def shot_noise_phase_bound(photons: np.ndarray) -> float:
    """RMS over pixels of the shot-noise limit 1 / (2 sqrt(n)) on the phase, radians."""
    n = np.asarray(photons, dtype=np.float64)
    if np.any(n <= 0):
        return math.inf
    return float(np.sqrt(np.mean(1.0 / (4.0 * n))))
