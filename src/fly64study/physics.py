"""Far-field ptychography physics: the probe's optics, the forward model and Poisson noise.

Forward model for scan position l (Thibault et al., Ultramicroscopy 109, 338 (2009)):

    psi_l = O_l * P                     exit wave: object patch times probe
    A_l   = fftshift |F psi_l|          far-field amplitude, F the orthonormal 2-D DFT
    E[c_l] = s^2 A_l^2                  expected counts; s chosen so the mean total per pattern is the dose
    c_l ~ Poisson(E[c_l])               measured counts

The stored ``diffraction`` is sqrt(c_l) / s, so in the noiseless limit it equals A_l. The
simulator (phase C) and the PINN's Poisson loss (phase E) call the same :func:`diffraction_amplitude`.
The orthonormal DFT conserves energy (Parseval): sum |F psi|^2 = sum |psi|^2.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: the overlap stages need only the numpy
    import torch   # half (probe_diameter), and importing torch costs seconds per stage process


def pupil(N: int, aperture: float, central_stop: float) -> np.ndarray:
    """Annular pupil on the detector grid, zero frequency at index 0.

    Parameters
    ----------
    N : int
        Grid size, pixels.
    aperture : float
        Outer pupil radius as a fraction of the detector half-width (0.5 cycles/pixel).
    central_stop : float
        Inner (blocked) radius as a fraction of the outer radius.

    Returns
    -------
    (N, N) float64 array of 0/1, unshifted (DC at [0, 0]).
    """
    k = np.fft.fftfreq(N)  # cycles per pixel
    kr = np.hypot(k[None, :], k[:, None])
    k_max = 0.5 * aperture
    return ((kr <= k_max) & (kr >= central_stop * k_max)).astype(np.float64)


def make_probe(N: int, *, aperture: float, central_stop: float, defocus: float) -> np.ndarray:
    """A focused, defocused probe: a zone-plate-like annular pupil propagated to a defocus plane.

    The pupil carries the paraxial defocus phase ``defocus * (k / k_max)**2`` (Fresnel propagation
    in the angular-spectrum picture); its inverse DFT is the probe in the sample plane, centred in
    the window: an Airy-like core with rings and a curved phase. The geometric diameter is about
    ``2 * defocus / (pi * k_max)`` pixels with ``k_max = aperture / 2``.

    Returns
    -------
    (N, N) complex64, normalised so that sum |P|^2 = (N/2)^2 (see :func:`normalise_probe`).
    """
    p = pupil(N, aperture, central_stop)
    k = np.fft.fftfreq(N)
    kr2 = k[None, :] ** 2 + k[:, None] ** 2
    phase = defocus * kr2 / (0.5 * aperture) ** 2
    probe = np.fft.fftshift(np.fft.ifft2(p * np.exp(1j * phase)))
    return normalise_probe(probe.astype(np.complex64))


def normalise_probe(probe: np.ndarray) -> np.ndarray:
    """Scale a probe so that sum |P|^2 = (N/2)^2.

    With this convention a transparent object gives the amplitude scale s = sqrt(dose) / (N/2),
    the PINN's input normalisation.
    """
    N = probe.shape[-1]
    energy = float(np.sum(np.abs(probe.astype(np.complex128)) ** 2))
    if not energy > 0:
        raise ValueError("probeGuess: the probe is zero everywhere; it must carry intensity")
    return (probe * np.sqrt((N / 2) ** 2 / energy)).astype(np.complex64)


def far_field(exit_wave: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DFT over the last two axes (energy-conserving), zero frequency at [0, 0]."""
    import torch

    return torch.fft.fft2(exit_wave, norm="ortho")


def diffraction_amplitude(obj_patches: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """Noiseless far-field amplitude fftshift |F(O * P)|.

    Parameters
    ----------
    obj_patches : (..., N, N) complex tensor, object patches at the scan positions
    probe : (N, N) complex tensor

    Returns
    -------
    (..., N, N) real tensor, zero frequency at the centre (index N // 2), in units where the
    expected counts are (s * amplitude)^2.
    """
    import torch

    amp = far_field(obj_patches * probe).abs()
    return torch.fft.fftshift(amp, dim=(-2, -1))


def intensity_scale(mean_exit_energy: float, dose: float) -> float:
    """s such that the expected total counts per pattern, s^2 * mean sum |psi|^2, equal ``dose``."""
    if not mean_exit_energy > 0:
        raise ValueError("exit waves carry no energy: the object or probe is zero where it is scanned")
    return float(np.sqrt(dose / mean_exit_energy))


def poisson_counts(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photon counts ~ Poisson(expected), drawn from the generator passed in (never global state)."""
    if np.any(expected < 0):
        raise ValueError("expected counts must be non-negative; check the intensity scale")
    return rng.poisson(expected).astype(np.float64)


def probe_diameter(probe: np.ndarray, fraction: float = 0.9) -> float:
    """Diameter, pixels, of the disc about the intensity centroid that holds ``fraction`` of |P|^2.

    The radius is interpolated between pixel distances, so the result is sub-pixel.
    """
    intensity = np.abs(probe.astype(np.complex128)) ** 2
    total = intensity.sum()
    if not total > 0:
        raise ValueError("probeGuess: the probe is zero everywhere; its diameter is undefined")
    iy, ix = np.indices(intensity.shape, dtype=np.float64)
    cy = float((iy * intensity).sum() / total)
    cx = float((ix * intensity).sum() / total)
    r = np.hypot(iy - cy, ix - cx).ravel()
    order = np.argsort(r, kind="stable")
    cum = np.cumsum(intensity.ravel()[order]) / total
    radius = float(np.interp(fraction, cum, r[order]))
    return 2.0 * radius
