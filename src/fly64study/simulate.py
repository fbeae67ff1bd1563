"""Phase C: a synthetic specimen, a random scan, and noisy diffraction at one dose, split on y.

Random streams all derive from ``design.seeds.simulation``: the object and scan are the same at
every dose (one specimen, one scan), the Poisson noise differs per dose label.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from fly64study import physics
from fly64study.contract import Dataset
from fly64study.design import Design, Generate, ObjectModel
from fly64study.samples import load_sample
from fly64study.files import sha256_file

log = logging.getLogger(__name__)

# Stream ids under the simulation seed, so that each random quantity has its own generator.
_OBJECT, _SCAN, _NOISE = 0, 1, 2
_BATCH = 512  # patterns per FFT batch: bounds memory at N = 128
_PAD = 12  # margin, pixels, around a patch for its sub-pixel Fourier shift
_TAPER = 8  # raised-cosine edge of that margin: a window cut hard rings ~1/distance into the patch


def rng_for(seed: int, stream: int, label: str = "") -> np.random.Generator:
    """An independent generator per (seed, stream, label); never global state."""
    return np.random.default_rng([seed, stream, *label.encode()])


# ---------------------------------------------------------------------------- specimen
def _fractal_noise(M: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power ~ 1/|k|^2 (natural-image statistics) up to Nyquist."""
    k = np.fft.fftfreq(M)
    kr = np.hypot(k[None, :], k[:, None])
    spectrum = np.fft.fft2(rng.standard_normal((M, M))) / np.maximum(kr, 1.0 / M)
    return np.fft.ifft2(spectrum).real


def _particles(M: int, model: ObjectModel, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Projected thickness of hard-edged discs of two materials; radii log-uniform in [1, r_max] px."""
    n = int(round(model.particle_density * M * M / 1000.0))
    thick = np.zeros((2, M, M))
    centres = rng.uniform(0, M, size=(n, 2))
    radii = np.exp(rng.uniform(0.0, math.log(model.particle_radius_max), size=n))
    heights = rng.uniform(0.3, 1.0, size=n)
    material = rng.integers(0, 2, size=n)
    for (cy, cx), r, h, m in zip(centres, radii, heights, material):
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, M)
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, M)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        thick[m, y0:y1, x0:x1] += h * (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r)
    return thick[0], thick[1]


def _unit(a: np.ndarray) -> np.ndarray:
    """Map to [0, 1] by the 0.5 and 99.5 percentiles, so a few stacked particles do not flatten the rest."""
    lo, hi = np.percentile(a, [0.5, 99.5])
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(a)


def make_object(M: int, model: ObjectModel, rng: np.random.Generator) -> np.ndarray:
    """A complex (M, M) specimen with features at every spatial frequency up to Nyquist.

    Two materials: A absorbs strongly, B mostly shifts the phase. Each material's projected
    thickness is hard-edged discs (broadband edges) plus 1/f texture. Transmission is
    ``amplitude_min ** t_abs`` in [amplitude_min, 1]; phase spans ``phase_range`` about zero.

    Returns
    -------
    (M, M) complex64
    """
    t_a, t_b = _particles(M, model, rng)
    t_a = _unit(t_a + 0.3 * _unit(_fractal_noise(M, rng)))
    t_b = _unit(t_b + 0.3 * _unit(_fractal_noise(M, rng)))
    amplitude = model.amplitude_min ** (0.7 * t_a + 0.3 * t_b)
    phase = model.phase_range * (0.4 * t_a + 0.6 * t_b - 0.5)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


# -------------------------------------------------------------------------------- scan
def random_scan(n: int, shape: tuple[int, int], N: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly random patch centres at least N/2 from every edge of an (H, W) object.

    Returns
    -------
    xcoords, ycoords : (n,) float64, object pixels (column, row of the patch centre)
    """
    H, W = shape
    x = rng.uniform(N / 2, W - N / 2, size=n)
    y = rng.uniform(N / 2, H - N / 2, size=n)
    return x, y


def extract_patches(obj: np.ndarray, xcoords: np.ndarray, ycoords: np.ndarray, N: int) -> np.ndarray:
    """Object patches centred at sub-pixel positions.

    ``patch[a, b] = obj(y - N/2 + a, x - N/2 + b)``: at integer positions an exact slice, at
    fractional ones a band-limited (Fourier) shift of a padded window whose outer edge is tapered,
    so the window's own edges do not ring into the patch (error < 1e-3 on smooth objects).

    Returns
    -------
    (n, N, N) complex64
    """
    L = N + 2 * _PAD
    padded = np.pad(obj, _PAD, mode="reflect")
    x0 = xcoords - N / 2
    y0 = ycoords - N / 2
    ix, iy = np.floor(x0).astype(np.int64), np.floor(y0).astype(np.int64)
    fx, fy = x0 - ix, y0 - iy
    k = np.fft.fftfreq(L)
    ramp = np.arange(L)
    edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(_TAPER) + 0.5) / _TAPER)
    taper = np.ones(L)
    taper[:_TAPER], taper[-_TAPER:] = edge, edge[::-1]
    taper2d = taper[:, None] * taper[None, :]
    out = np.empty((len(xcoords), N, N), dtype=np.complex64)
    for start in range(0, len(xcoords), _BATCH):
        sl = slice(start, start + _BATCH)
        rows = iy[sl, None] + ramp[None, :]  # window starts _PAD above the patch, in padded coords
        cols = ix[sl, None] + ramp[None, :]
        win = padded[rows[:, :, None], cols[:, None, :]] * taper2d
        # W(u + f) <-> W_hat(k) exp(2 pi i k f)
        shift = np.exp(2j * np.pi * (k[None, :, None] * fy[sl, None, None] + k[None, None, :] * fx[sl, None, None]))
        win = np.fft.ifft2(np.fft.fft2(win) * shift)
        out[sl] = win[:, _PAD:_PAD + N, _PAD:_PAD + N]
    return out


# -------------------------------------------------------------------------- diffraction
@dataclass(frozen=True)
class Measurement:
    diffraction: np.ndarray  # (n, N, N) float32, sqrt(counts) / s
    intensity_scale: float  # s
    mean_counts: float  # measured mean total counts per pattern


def simulate_diffraction(
    patches: np.ndarray, probe: np.ndarray, dose: float, rng: np.random.Generator
) -> Measurement:
    """Poisson-noisy far-field amplitudes of ``patches`` under ``probe`` at ``dose`` photons per pattern.

    Parameters
    ----------
    patches : (n, N, N) complex64 object patches
    probe : (N, N) complex64
    dose : expected photons per pattern, averaged over the n patterns
    rng : generator for the Poisson draws
    """
    # Parseval: the total expected intensity per pattern is sum |O P|^2, no FFT needed for s.
    # In batches: the whole stack in complex128 would be the stage's peak (5x the patches).
    energy = np.concatenate([np.sum(np.abs(patches[i:i + _BATCH].astype(np.complex128) * probe) ** 2, axis=(1, 2))
                             for i in range(0, len(patches), _BATCH)])
    s = physics.intensity_scale(float(energy.mean()), dose)
    probe_t = torch.from_numpy(probe)
    diffraction = np.empty(patches.shape, dtype=np.float32)
    total = 0.0
    for start in tqdm(range(0, len(patches), _BATCH), desc=f"diffraction @ {dose:g}", unit="batch", leave=False,
                       disable=None):  # no bar when output is not a terminal (logs, CI)
        sl = slice(start, start + _BATCH)
        amp = physics.diffraction_amplitude(torch.from_numpy(patches[sl]), probe_t).numpy()
        counts = physics.poisson_counts((s * amp.astype(np.float64)) ** 2, rng)
        total += counts.sum()
        diffraction[sl] = np.sqrt(counts) / s
    return Measurement(diffraction=diffraction, intensity_scale=s, mean_counts=total / len(patches))


def split_on_axis(ds: Dataset, axis: str) -> tuple[Dataset, Dataset]:
    """Split at the midpoint of the scanned range on ``axis``: train below, test at or above."""
    coord = ds.ycoords if axis == "y" else ds.xcoords
    threshold = 0.5 * (float(coord.min()) + float(coord.max()))
    parts = []
    for part, mask in (("train", coord < threshold), ("test", coord >= threshold)):
        index = np.flatnonzero(mask)
        record = {"op": "split", "axis": axis, "threshold": threshold, "part": part,
                  "kept": int(index.size), "total": ds.n}
        parts.append(ds.subset(index, record, split=part))
    return parts[0], parts[1]


# ------------------------------------------------------------------------------ phase C
_HC_EV_M = 1.23984198e-6  # h c, eV m: wavelength = hc / E


def sample(design: Design, gen: Generate) -> tuple[np.ndarray, np.ndarray, dict]:
    """The probe and object of the study: synthetic, or read from ``gen.base_sample``
    (:func:`fly64study.samples.load_sample`: probe fitted to N x N, object peaking at amplitude 1).

    Returns probe (N, N) complex64 normalised, object (H, W) complex64, and their provenance with
    the geometry in metres (the file's own where it has one, else ``generate.geometry``).
    """
    N = design.N
    g = gen.geometry
    geometry = {"pixel_size_m": g.pixel_size_m, "photon_energy_eV": g.photon_energy_eV,
                "detector_distance_m": g.detector_distance_m}
    if gen.base_sample:
        base = load_sample(gen.base_sample, N)
        probe, obj = base.probe, base.obj
        source = {"source": "base_sample", "sha256": sha256_file(gen.base_sample), **base.record}
        geometry.update(base.geometry)
    else:
        o = gen.probe
        probe = physics.make_probe(N, aperture=o.aperture, central_stop=o.central_stop, defocus=o.defocus)
        obj = make_object(gen.object_size, gen.object, rng_for(design.seeds.simulation, _OBJECT))
        source = {
            "source": "synthetic",
            "probe": {"model": "annular pupil, defocused", "aperture": o.aperture,
                      "central_stop": o.central_stop, "defocus_rad": o.defocus},
            "object": {"model": "two-material discs + 1/f texture", "size": gen.object_size,
                       **{k: getattr(gen.object, k) for k in gen.object.__dataclass_fields__}},
        }
    source["probe_normalisation"] = "sum |P|^2 = (N/2)^2"
    # the far field of N pixels of dx: detector pixels of λ z / (N dx) (a probe fitted to N changes this)
    wavelength_m = _HC_EV_M / geometry["photon_energy_eV"]
    geometry["detector_pixel_m"] = wavelength_m * geometry["detector_distance_m"] / (N * geometry["pixel_size_m"])
    source["geometry"] = geometry
    return physics.normalise_probe(probe), obj, source


def generate_dose(design: Design, gen: Generate, label: str) -> tuple[Dataset, Dataset]:
    """Simulate the dose ``label`` of the design and split it; returns (train, test)."""
    dose = design.doses[label]
    N, seed = design.N, design.seeds.simulation
    probe, obj, source = sample(design, gen)
    x, y = random_scan(gen.n_positions, obj.shape, N, rng_for(seed, _SCAN))
    log.info("dose %s: %d positions on a %s object, N=%d", label, len(x), obj.shape, N)
    patches = extract_patches(obj, x, y, N)
    meas = simulate_diffraction(patches, probe, dose, rng_for(seed, _NOISE, label))
    log.info("dose %s: s=%.5g, mean counts per pattern %.1f (design %.1f)", label, meas.intensity_scale,
             meas.mean_counts, dose)
    metadata = {
        "nphotons": dose,
        "dose_label": label,
        "N": N,
        "intensity_scale": meas.intensity_scale,
        "intensity_scale_nominal": math.sqrt(dose) / (N / 2),
        "seeds": {"simulation": seed},
        "source": source,
        "probe_diameter90_px": physics.probe_diameter(probe),
        "transformations": [{
            "op": "simulate",
            "model": "counts ~ Poisson(s^2 |F(O P)|^2); diffraction = sqrt(counts) / s, fftshifted",
            "n_positions": int(len(x)),
            "mean_counts": meas.mean_counts,
            "patch_extraction": "Fourier sub-pixel shift",
        }],
    }
    full = Dataset(diffraction=meas.diffraction, probeGuess=probe, objectGuess=obj,
                   xcoords=x, ycoords=y, metadata=metadata, Y=patches)
    return split_on_axis(full, design.split_axis)
