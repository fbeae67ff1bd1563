"""PtychoPINN inference on a whole test split: verified bundle -> patches -> one stitched field.

Each patch is the network's object at one scan position (:func:`fly64study.train.reconstruct_patches`).
Stitching puts every patch back at its sub-pixel position and averages the overlaps with the
probe intensity |P|² as weight: the centre of a patch, where the pattern says most about the
object, counts most, and its edges (barely lit, so barely constrained) hardly at all.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fly64study.bundle import load_inference_model
from fly64study.contract import ContractError, Dataset
from fly64study.train import reconstruct_patches

TRAINING_MANIFEST = "training_manifest.json"  # phase E's, per job: <runs>/<dose>-<job>/
REFINE_MANIFEST = "refine_manifest.json"  # refine@'s, the same entries: <refine runs>/<dose>-<view>/
UNSEEN = 1e-3  # pixels whose total weight is below this share of the largest stay flat (1 + 0j)


def stitch(patches: np.ndarray, xcoords: np.ndarray, ycoords: np.ndarray, shape: tuple[int, int],
           window: np.ndarray) -> np.ndarray:
    """Weighted average of ``patches`` (n, N, N) placed at their positions on an object of ``shape``.

    ``patch[a, b] = obj(y - N/2 + a, x - N/2 + b)`` (the simulator's convention): the fractional
    part of each position is applied as a Fourier shift of the weighted patch and of its weight,
    the integer part as the slice it lands in. Unseen pixels are 1 (a flat, transparent object).
    """
    n, N, _ = patches.shape
    H, W = shape
    num = np.zeros((H + 2 * N, W + 2 * N), np.complex128)  # N of margin: patches may overhang the edge
    den = np.zeros((H + 2 * N, W + 2 * N))
    y0, x0 = ycoords - N / 2, xcoords - N / 2
    iy, ix = np.floor(y0).astype(np.int64), np.floor(x0).astype(np.int64)
    k = np.fft.fftfreq(N)
    ramp = np.exp(-2j * np.pi * (k[None, :, None] * (y0 - iy)[:, None, None] + k[None, None, :] * (x0 - ix)[:, None, None]))
    moved = np.fft.ifft2(np.fft.fft2(patches * window) * ramp)
    weight = np.fft.ifft2(np.fft.fft2(np.broadcast_to(window, patches.shape)) * ramp).real
    for j in range(n):
        r, c = iy[j] + N, ix[j] + N
        num[r:r + N, c:c + N] += moved[j]
        den[r:r + N, c:c + N] += weight[j]
    num, den = num[N:N + H, N:N + W], den[N:N + H, N:N + W]
    seen = den > UNSEEN * den.max()
    out = np.ones(shape, np.complex64)
    out[seen] = num[seen] / den[seen]
    return out


@dataclass(frozen=True)
class TrainedBundle:
    seed: int
    path: Path
    sha256: str  # as the training manifest recorded it
    training: dict  # epochs_run, best_epoch, final_val_loss: what the training cost
    settings: dict  # the network and training settings it was made with (the manifest's record)


def trained_bundles(runs: Path, artifact_root: Path, dose: str, job: str, gridsize: int,
                    manifest_name: str = TRAINING_MANIFEST) -> list[TrainedBundle]:
    """A job's bundles, one per training seed, in the order of its manifest
    ``<runs>/<dose>-<job>/<manifest_name>`` (phase E's training manifest, or a refinement's)."""
    manifest = Path(runs) / f"{dose}-{job}" / manifest_name
    try:
        entries = json.loads(manifest.read_text())["jobs"]
    except (OSError, ValueError, KeyError) as err:
        raise ContractError(f"{manifest}: cannot read the {manifest_name} ({err}); run `dvc repro` first") from None
    found = [TrainedBundle(e["seed"], Path(artifact_root) / e["bundle_path"], e["sha256"],
                           {"epochs_run": e["epochs"], "best_epoch": e["best_epoch"],
                            "final_val_loss": e["final_val_loss"]},
                           {k: v for k, v in e.get("settings", {}).items() if k not in ("epochs_run", "best_epoch", "seed")})
             for e in entries if e["dose"] == dose and e["view"] == job and e["gridsize"] == gridsize]
    if not found:
        raise ContractError(f"{manifest}: no entry for dose {dose}, job {job}, gridsize {gridsize}")
    return found


@dataclass(frozen=True)
class PinnField:
    field: np.ndarray  # (H, W) complex64, the ground truth's frame
    gridsize: int
    seconds: float  # inference and stitching (the bundle already loaded)


def pinn_field(bundle: str | Path, ds: Dataset, *, neighbor_count: int, grouping_seed: int,
               expected_sha256: str | None = None, device: str = "cpu") -> PinnField:
    """Load ``bundle`` through the verified loader and reconstruct ``ds`` as one stitched field."""
    net = load_inference_model(bundle, expected_sha256)
    t0 = time.perf_counter()
    patches = reconstruct_patches(net, ds, neighbor_count=neighbor_count, grouping_seed=grouping_seed, device=device)
    field = stitch(patches, ds.xcoords, ds.ycoords, ds.objectGuess.shape, np.abs(ds.probeGuess) ** 2)
    return PinnField(field=field, gridsize=net.cfg.gridsize, seconds=time.perf_counter() - t0)
