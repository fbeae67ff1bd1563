"""PINN inference on a whole test split: verified bundle -> patches -> one stitched field.

Each patch is the network's object at one scan position (:func:`fly64study.train.reconstruct_patches`).
Stitching puts every patch back at its sub-pixel position and averages the overlaps with the
probe intensity |P|² as weight: the centre of a patch, where the pattern says most about the
object, counts most, and its edges (barely lit, so barely constrained) hardly at all.
"""
from __future__ import annotations

import heapq
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.spatial import cKDTree

from fly64study.bundle import load_inference_model
from fly64study.contract import ContractError, Dataset
from fly64study.design import DEFAULT_NETWORK, STITCHING, ParamsError
from fly64study.likelihood import gap_closed
from fly64study.train import every_group_patches, reconstruct_patches

TRAINING_MANIFEST = "training_manifest.json"  # a training stage's, per job: <root>/runs/<dose>-<job>/
REFINE_MANIFEST = "refine_manifest.json"  # refine@'s, the same entries (every network's): <refine runs>/<dose>-<view>/
UNSEEN = 1e-3  # pixels whose total weight is below this share of the largest stay flat (1 + 0j)
SYNC_ITERATIONS = 500  # power iterations of synchronise_phases at most (it stops when the phases stop moving)


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


TRAINED_ROOTS = {"bp_unet": "data/phase_e", "ptychopinn": "data/ptychopinn"}  # each network's training stage outputs


def trained_roots(pairs: list[str]) -> dict[str, Path]:
    """``NETWORK=ROOT`` command-line pairs over the pipeline's defaults (:data:`TRAINED_ROOTS`)."""
    roots = dict(TRAINED_ROOTS)
    for pair in pairs:
        network, sep, root = pair.partition("=")
        if not sep or network not in TRAINED_ROOTS or not root:
            raise ParamsError(f"--trained {pair!r}: expected NETWORK=ROOT with NETWORK one of {sorted(TRAINED_ROOTS)}")
        roots[network] = root
    return {n: Path(r) for n, r in roots.items()}


def training_manifest(root: str | Path, dose: str, job: str) -> Path:
    """A training stage's manifest of one job: ``<root>/runs/<dose>-<job>/training_manifest.json``."""
    return Path(root) / "runs" / f"{dose}-{job}" / TRAINING_MANIFEST


def synchronise_phases(patches: np.ndarray, xcoords: np.ndarray, ycoords: np.ndarray,
                       window: np.ndarray, iterations: int = SYNC_ITERATIONS) -> np.ndarray:
    """Patches (n, N, N) turned so that their constant phases agree where they overlap.

    No diffraction pattern fixes its patch's constant phase (O and O·e^{ic} give the same counts),
    so a network free to choose it per group (the published PtychoPINN has no phase prior) may
    stitch a field of patches offset from one another. Angular synchronisation (Singer, Appl.
    Comput. Harmon. Anal. 30, 20 (2011)): H_jk is the window-weighted overlap of patch j with patch
    k (nonzero where their windows overlap; a sub-pixel shift, exact in Fourier space on a canvas of
    2N), about e^{i(c_j - c_k)} times a positive weight, and the leading eigenvector of H gives every
    c_j at once; each patch is turned by -c_j. The vector starts from the phases passed along a
    maximum spanning tree of the overlaps (close to the answer, so power iteration converges in a
    few steps even on a large scan) and is iterated until it changes by less than 1e-9, at most
    ``iterations`` times. Reads the patches alone: no truth, no counts. ``iterations`` 0 returns
    them unchanged."""
    patches = np.array(patches, dtype=np.complex64)
    n, N, _ = patches.shape
    if iterations < 1 or n < 2:
        return patches
    pts = np.column_stack([xcoords, ycoords])
    support = np.argwhere(window > 1e-3 * window.max())
    reach = float(np.ptp(support, axis=0).max()) + 1  # windows this far apart no longer overlap
    pairs = np.array(sorted(cKDTree(pts).query_pairs(r=min(reach, N - 1))), dtype=np.int64).reshape(-1, 2)
    P = 2 * N  # a canvas with room for the shift: no wrap-around
    spectra = np.fft.fft2(np.pad(patches * window, ((0, 0), (0, N), (0, N)))).astype(np.complex64)
    f = np.fft.fftfreq(P)
    values = np.empty(len(pairs), np.complex128)
    for i, (j, k) in enumerate(pairs):
        dx, dy = pts[k] - pts[j]  # patch k's content sits (dx, dy) further on in patch j's frame
        # sum over the canvas of U_j conj(U_k e^{-2 pi i (f.d)}): the shift ramp is separable
        values[i] = np.exp(2j * np.pi * f * dy) @ (spectra[j] * np.conj(spectra[k])) @ np.exp(2j * np.pi * f * dx) / P**2
    diagonal = np.sum(np.abs(patches * window) ** 2, axis=(-2, -1)).astype(np.complex128)
    rows = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(n)])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(n)])
    matrix = coo_matrix((np.concatenate([values, np.conj(values), diagonal]), (rows, cols)), shape=(n, n)).tocsr()
    v = _spanning_tree_phases(n, pairs, values)
    for _ in range(iterations):
        new = matrix @ v
        new /= np.linalg.norm(new)
        new *= np.conj(new[0]) / abs(new[0])  # the global phase is free: keep patch 0's fixed
        done = np.max(np.abs(new - v)) < 1e-9
        v = new
        if done:
            break
    turn = np.conj(v) / np.maximum(np.abs(v), 1e-30)
    return patches * turn.astype(np.complex64)[:, None, None]


def _spanning_tree_phases(n: int, pairs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """e^{i c_j} from the overlaps H_jk ~ e^{i(c_j - c_k)} passed along a maximum spanning tree (strongest
    overlaps first, Prim); a patch overlapping none keeps phase 0."""
    neighbours: list[list[tuple[float, int, int]]] = [[] for _ in range(n)]
    for i, (j, k) in enumerate(pairs):
        neighbours[j].append((-abs(values[i]), int(k), i))
        neighbours[k].append((-abs(values[i]), int(j), i))
    phase = np.full(n, np.nan)
    for root in range(n):
        if not np.isnan(phase[root]):
            continue
        phase[root] = 0.0
        heap = [(w, m, i, root) for w, m, i in neighbours[root]]
        heapq.heapify(heap)
        while heap:
            _, m, i, j = heapq.heappop(heap)
            if not np.isnan(phase[m]):
                continue
            a, _ = pairs[i]
            # H_ab = e^{i(c_a - c_b)}: from the placed patch j to its neighbour m
            phase[m] = phase[j] - np.angle(values[i]) if a == j else phase[j] + np.angle(values[i])
            for w, o, e in neighbours[m]:
                if np.isnan(phase[o]):
                    heapq.heappush(heap, (w, o, e, m))
    return np.exp(1j * phase)


@dataclass(frozen=True)
class TrainedBundle:
    seed: int
    path: Path
    sha256: str  # as the training manifest recorded it
    training: dict  # epochs_run, best_epoch, final_val_loss and the likelihood gap closed: what training did
    settings: dict  # the network and training settings it was made with (the manifest's record)


def trained_bundles(manifest: Path, artifact_root: Path, dose: str, job: str, gridsize: int,
                    network: str = DEFAULT_NETWORK) -> list[TrainedBundle]:
    """A job's bundles of ``network``, one per training seed, in the order of ``manifest`` (a training
    stage's ``<root>/runs/<dose>-<job>/training_manifest.json``, or a refinement's); each bundle's
    path is its entry's ``bundle_path`` under ``artifact_root``."""
    manifest = Path(manifest)
    try:
        entries = json.loads(manifest.read_text())["jobs"]
        found = [TrainedBundle(e["seed"], Path(artifact_root) / e["bundle_path"], e["sha256"],
                               {"epochs_run": e["epochs"], "best_epoch": e["best_epoch"],
                                "final_val_loss": e["final_val_loss"], **gap_closed(e.get("likelihood_gap", {}))},
                               {k: v for k, v in e.get("settings", {}).items()
                                if k not in ("epochs_run", "best_epoch", "seed")})
                 for e in entries if (e["dose"], e["view"], e["gridsize"], e["network"]) == (dose, job, gridsize, network)]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ContractError(f"{manifest}: cannot read it ({type(err).__name__}: {err}); run `dvc repro` first") from None
    if not found:
        raise ContractError(f"{manifest}: no entry for dose {dose}, job {job}, gridsize {gridsize}, network {network}")
    return found


@dataclass(frozen=True)
class PinnField:
    field: np.ndarray  # (H, W) complex64, the ground truth's frame
    gridsize: int
    seconds: float  # inference and stitching (the bundle already loaded)


def pinn_field(bundle: str | Path, ds: Dataset, *, neighbor_count: int, grouping_seed: int,
               expected_sha256: str | None = None, device: str = "cpu",
               stitching: str = "one_per_position", synchronise: bool = False) -> PinnField:
    """Load ``bundle`` through the verified loader and reconstruct ``ds`` as one stitched field:
    ``one_per_position`` stitches each position's patch once (groups covering the positions,
    :func:`fly64study.train.reconstruct_patches`), ``every_group`` every member's patch of a group
    seeded at every position (upstream's reassembly, :func:`fly64study.train.every_group_patches`);
    both weight a patch by the probe's intensity, so its centre counts most. With ``synchronise``
    the patches' constant phases are first made to agree (:func:`synchronise_phases`)."""
    net = load_inference_model(bundle, expected_sha256)
    t0 = time.perf_counter()
    window = np.abs(ds.probeGuess) ** 2
    if stitching == "one_per_position":
        patches = reconstruct_patches(net, ds, neighbor_count=neighbor_count, grouping_seed=grouping_seed, device=device)
        xs, ys = ds.xcoords, ds.ycoords
    elif stitching == "every_group":
        patches, where = every_group_patches(net, ds, neighbor_count=neighbor_count, grouping_seed=grouping_seed,
                                             device=device)
        xs, ys = ds.xcoords[where], ds.ycoords[where]
    else:
        raise ParamsError(f"compare.stitching: {stitching!r}; choose one of {list(STITCHING)}")
    if synchronise:
        patches = synchronise_phases(patches, xs, ys, window)
    field = stitch(patches, xs, ys, ds.objectGuess.shape, window)
    return PinnField(field=field, gridsize=net.cfg.gridsize, seconds=time.perf_counter() - t0)
