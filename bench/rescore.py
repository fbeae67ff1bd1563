"""An independent recomputation of the report's phase MS-SSIM (aligned level), row by row.

    .venv/bin/python bench/rescore.py            # after `dvc repro`; prints a table, exits 1 on a gap > 0.01

Written apart from ``fly64study.metrics``: the fields are rebuilt (LSQML from phase F's file,
the +LSQML models from hybrid@'s files, PtychoPINN, BP-UNet, the +refine models and BP-UNet-gs1 from their
verified bundles through the stitching of phase G), then
registered with one call of ``skimage.registration.phase_cross_correlation`` on the crop (no
iteration, the shift refused beyond design.metrics.max_shift_px), shifted with
``scipy.ndimage.fourier_shift``, freed of a phase plane fitted by ``numpy.linalg.lstsq`` to the
unwrapped-by-difference phase, and scored with ``pytorch_msssim.ms_ssim`` (5 levels, Gaussian
window 7 or what fits, data range of the truth) and, as a cross-check, skimage's SSIM.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import fly64study  # noqa: F401  (pins the numerics: before numpy and torch load)
import numpy as np
import pytorch_msssim
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity
from skimage.registration import phase_cross_correlation

from fly64study.contract import load_dataset
from fly64study.design import load_params
from fly64study.inference import REFINE_MANIFEST, TRAINED_ROOTS, pinn_field, trained_bundles, training_manifest
from fly64study.models import model_of
from fly64study.iterative import load_result

TOLERANCE = 0.01


def crop_box(ds):
    y0, y1 = int(np.ceil(ds.ycoords.min())), int(np.floor(ds.ycoords.max())) + 1
    x0, x1 = int(np.ceil(ds.xcoords.min())), int(np.floor(ds.xcoords.max())) + 1
    return slice(max(y0, 0), y1), slice(max(x0, 0), x1)


def phase_scores(field: np.ndarray, truth: np.ndarray, box, max_shift: float) -> tuple[float, float, str]:
    t = truth[box]
    field = field * np.exp(1j * np.angle(np.vdot(field[box], t)))
    shift, _, _ = phase_cross_correlation(t - t.mean(), field[box] - field[box].mean(), upsample_factor=100,
                                          normalization=None)
    note = "registered"
    if np.max(np.abs(shift)) > max_shift:
        shift, note = np.zeros(2), "unshifted (registration refused)"
    moved = np.fft.ifftn(ndimage.fourier_shift(np.fft.fftn(field), shift))[box]
    diff = np.angle(moved * np.conj(t))
    h, w = t.shape
    yy, xx = np.mgrid[0:h, 0:w]
    A = np.stack([np.ones(h * w), yy.ravel(), xx.ravel()], 1)
    wt = np.abs(t).ravel()
    for _ in range(3):  # refit on the residual: a plane of a radian or so converges
        coef = np.linalg.lstsq(A * wt[:, None], diff.ravel() * wt, rcond=None)[0]
        moved = moved * np.exp(-1j * (A @ coef).reshape(h, w))
        diff = np.angle(moved * np.conj(t))
    pred, ref = np.angle(t) + diff, np.angle(t)
    lo, rng = ref.min(), ref.max() - ref.min()
    win = 11
    while min(h, w) <= (win - 1) * 16:
        win -= 2
    x = torch.tensor((pred - lo) / rng, dtype=torch.float32)[None, None]
    y = torch.tensor((ref - lo) / rng, dtype=torch.float32)[None, None]
    ms = float(pytorch_msssim.ms_ssim(x, y, data_range=1.0, win_size=win))
    ss = float(structural_similarity(ref, pred, data_range=rng, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False))
    return ms, ss, note


def main() -> None:
    params = load_params("params.yaml")
    d = params.design
    print("| view | dose | model | report phase MS-SSIM | recomputed | gap | recomputed SSIM | registration |")
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for view in params.compare.views:
        for dose in d.doses:
            test = load_dataset(f"data/phase_d/dose_{dose}/{view}/test.npz")
            report = json.loads(Path(f"data/phase_g/dose_{dose}/{view}/comparison.json").read_text())["models"]
            fields = {"LSQML": [load_result(f"data/phase_f/dose_{dose}/{view}/ptychi_reconstruction.npz").object]}
            hybrid = Path(f"data/hybrid/dose_{dose}/{view}")
            for e in json.loads((hybrid / "hybrid_manifest.json").read_text())["jobs"]:
                fields.setdefault(model_of(e["network"], "hybrid").name, []).append(
                    load_result(hybrid / e["network"] / f"seed_{e['seed']}" / "ptychi_reconstruction.npz").object)
            sources = [(model_of(n, "trained").name, view, n, training_manifest(r, dose, view), r)
                       for n, r in TRAINED_ROOTS.items()]
            sources += [(model_of(n, "refined").name, view, n,
                         Path(f"data/refine/runs/{dose}-{view}") / REFINE_MANIFEST, "data/refine")
                        for n in params.refine.networks]
            sources.append(("BP-UNet-gs1", params.compare.baseline, "bp_unet",
                            training_manifest(TRAINED_ROOTS["bp_unet"], dose, params.compare.baseline), TRAINED_ROOTS["bp_unet"]))
            for model, job, network, manifest, root in sources:
                fields[model] = [pinn_field(b.path, test, neighbor_count=d.neighbor_count, grouping_seed=d.seeds.grouping,
                                            expected_sha256=b.sha256, stitching=params.compare.stitching,
                                            synchronise=params.compare.synchronise_phases).field
                                 for b in trained_bundles(manifest, Path(root), dose, job, params.train.jobs[job], network)]
            for model in fields:  # the report gives a model's mean over its seeds
                scores = [phase_scores(f, test.objectGuess, crop_box(test), d.metrics.max_shift_px) for f in fields[model]]
                ms, ss = (sum(sc[i] for sc in scores) / len(scores) for i in (0, 1))
                note = "; ".join(sorted({sc[2] for sc in scores}))
                gap = abs(ms - report[model]["ms_ssim_phase"])
                worst = max(worst, gap)
                print(f"| {view} | {dose} | {model} | {report[model]['ms_ssim_phase']:.4f} | {ms:.4f} | {gap:.4f} | "
                      f"{ss:.4f} | {note} |", flush=True)
    print(f"\nlargest gap {worst:.4f} (tolerance {TOLERANCE})")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
