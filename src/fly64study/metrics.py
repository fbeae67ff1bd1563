"""Reconstruction error metrics against the ground truth.

Patch metrics (phase E's learning check): errors weighted by the probe intensity |P|^2, since
a pattern says nothing about the object where the probe does not reach, after removing each
patch's global phase (unobservable in far-field data).
"""
from __future__ import annotations

import numpy as np


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
