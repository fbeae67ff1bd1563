"""Phase C throughput: diffraction patterns per second against a plain batched FFT (the floor).

Run with `make bench` (or `.venv/bin/python bench/simulate.py`). Both sides are timed in the same
run, so the ratio is meaningful on a shared machine even when absolute times drift.
"""
from __future__ import annotations

import platform

import fly64study  # noqa: F401  (pins the numerics: before numpy and torch load)
import numpy as np
import torch

from _timing import best_of
from fly64study import physics
from fly64study.design import ObjectModel
from fly64study.simulate import extract_patches, make_object, random_scan, simulate_diffraction

CASES = [(64, 2048), (128, 1024)]


def main() -> None:
    print(f"# simulate: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| N | patterns | forward + Poisson (patterns/s) | + patch extraction (patterns/s) | batched FFT (patterns/s) | FFT / forward |")
    print("|---|---|---|---|---|---|")
    model = ObjectModel(amplitude_min=0.6, phase_range=2.0, particle_density=5.0, particle_radius_max=12.0)
    for N, n in CASES:
        rng = np.random.default_rng(0)
        obj = make_object(4 * N, model, rng)
        x, y = random_scan(n, obj.shape, N, rng)
        probe = physics.make_probe(N, aperture=0.4, central_stop=0.3, defocus=6.0 * N / 64)
        patches = extract_patches(obj, x, y, N)
        t_fwd = best_of(lambda: simulate_diffraction(patches, probe, 1e4, np.random.default_rng(1)))
        t_all = best_of(lambda: simulate_diffraction(extract_patches(obj, x, y, N), probe, 1e4,
                                                     np.random.default_rng(1)))
        batch = torch.from_numpy(patches)
        t_fft = best_of(lambda: torch.fft.fft2(batch, norm="ortho"))
        print(f"| {N} | {n} | {n / t_fwd:,.0f} | {n / t_all:,.0f} | {n / t_fft:,.0f} | {t_fwd / t_fft:.1f}× slower |")


if __name__ == "__main__":
    main()
