"""Phase F, before the baseline runs: LSQML's settings per dose and view, chosen on training data.

The iterative baseline deserves the same care as the network, and the same rule: nothing is
chosen on the test split. ``tune@<dose>-<view>`` runs LSQML over the grid of ``reconstruct.tune``
(noise model × total-variation weight × step size) on the *training* split of that view, for
``reconstruct.epochs``, and scores its object every ``reconstruct.tune.score_every`` epochs by
the phase MS-SSIM against that split's own ground truth (aligned exactly as phase G aligns). The
best (point, epochs) is the choice that ``reconstruct@<dose>-<view>`` runs on the test split:
more epochs only where they still improved the object (at 1e3 the Gaussian runs went on lowering
their cost by fitting the noise after 25 epochs). Ties go to the earlier grid point (the order of the params lists),
then to fewer epochs, so the choice is reproducible. Each run's cost curve is summarised too
(``flat_from_epoch``): where it is the last epoch, the cost was still falling at the cap.

Each view is tuned on its own training split: one view's best is not another's (default profile,
sparse training splits: the dense view's choice scored 0.54 and 0.74 at 1e4 and 1e5, sparse's own,
Gaussian with TV 0.1, 0.77 and 0.85; bench/LOG.md).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from fly64study import metrics
from fly64study.contract import ContractError, Dataset
from fly64study.design import Reconstruct
from fly64study.iterative import Choice, final_cost, lsqml
from fly64study.numerics import pin_torch

log = logging.getLogger(__name__)

FLAT = 1e-3  # a cost curve is flat from the first epoch after which no epoch lowers it by more than this share
# a worker process costs about 4 s of imports: grid points below this many pattern-epochs each run in
# turn (the default profile's sparse 1e4 grid, 4 points of 86 positions x 30 epochs: 19-24 s in turn,
# 15 s two at a time, Xeon 2 cores)
POOL_FROM = 2000


def flat_from(cost: np.ndarray) -> int | None:
    """The first epoch (1-based) from which every later epoch lowers the cost by less than
    :data:`FLAT` of its value; None for an empty or non-finite curve."""
    if cost.size == 0 or not np.all(np.isfinite(cost)):
        return None
    drops = (cost[:-1] - cost[1:]) / np.abs(cost[:-1])
    steep = np.nonzero(drops > FLAT)[0]
    return int(steep[-1]) + 2 if steep.size else 1


def score(field: np.ndarray, split: Dataset, max_shift: float) -> float:
    """Phase MS-SSIM of ``field`` against ``split``'s own truth on its scanned area, aligned as in phase G."""
    region = metrics.scanned_area(split.xcoords, split.ycoords, split.objectGuess.shape)
    al = metrics.align(field, split.objectGuess, region, max_shift=max_shift)
    return float(metrics.ms_ssim(al.phase, al.truth_phase))


def _grid_point(job: tuple) -> dict:
    """One LSQML run of the grid, scored along the way; its best epochs and that score."""
    train, cfg, choice, max_shift, device, deterministic = job
    result = lsqml(train, cfg, device=device, deterministic=deterministic, choice=choice,
                   snapshot_every=cfg.tune.score_every)
    row = {"noise_model": choice.noise_model, "tv_weight": choice.tv_weight, "step_size": choice.step_size,
           "status": result.status, "error": result.error, "final_cost": final_cost(result),
           "flat_from_epoch": flat_from(result.cost), "ms_ssim_phase_by_epoch": [], "epochs": None,
           "ms_ssim_phase": None}
    # a failed run (a non-finite last object) is no choice, though its earlier snapshots may have scored
    if result.status == "completed":  # a refused registration is scored unshifted, as in phase G
        for epoch, field in result.snapshots:
            ms = score(field, train, max_shift)
            # a non-finite score (a NaN object) is no score: max() would let a NaN win
            row["ms_ssim_phase_by_epoch"].append([epoch, ms if math.isfinite(ms) else None])
        scored = [(e, ms) for e, ms in row["ms_ssim_phase_by_epoch"] if ms is not None]
        if scored:
            row["epochs"], row["ms_ssim_phase"] = max(scored, key=lambda p: p[1])  # the first of equals: fewer epochs
        else:
            row["error"] = row["error"] or "phase MS-SSIM is not finite at any scored epoch"
    return row


def tune(train: Dataset, cfg: Reconstruct, *, max_shift: float, device: str = "cpu",
         deterministic: bool = True, workers: int | None = None) -> dict:
    """Every grid point of ``cfg.tune`` on ``train`` (a training split, with its ``objectGuess``),
    each scored every ``cfg.tune.score_every`` epochs up to ``cfg.epochs``; returns the grid with
    scores, costs and the chosen point and epochs (``chosen``: a :class:`Choice`'s fields).
    ``workers``: processes running grid points side by side, each on one thread
    (default: one per CPU core this process may use, where a point is worth a process, see
    :data:`POOL_FROM`); 1 runs them in turn in this process. The result does not depend on it."""
    if train.objectGuess is None or not np.any(train.objectGuess):
        raise ContractError("tune: the training split has no ground truth (objectGuess) to score against")
    points = [Choice(noise_model=noise, tv_weight=tv, step_size=step) for noise, tv, step in
              itertools.product(cfg.tune.noise_models, cfg.tune.tv_weights, cfg.tune.step_sizes)]
    # LSQML is reproducible on one thread only, so the grid points run side by side, in worker
    # processes of one thread (no state carries from one point to the next: the same bytes as one
    # after another in this process, which a test checks).
    # Spawned workers do not record params reads (FLY64STUDY_PARAMS_RECORD): every setting is read here.
    for section in (cfg, cfg.tune):
        for f in dataclasses.fields(section):
            getattr(section, f.name)
    jobs = [(train, cfg, choice, max_shift, device, deterministic) for choice in points]
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = cores if train.n * cfg.epochs >= POOL_FROM else 1
    workers = min(len(points), workers)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=pin_torch, initargs=(deterministic, 1)) as pool:
            grid = list(pool.map(_grid_point, jobs))
    else:
        grid = [_grid_point(job) for job in jobs]
    for i, row in enumerate(grid, 1):
        log.info("tune %d/%d: %s, tv %g, step %g: phase MS-SSIM %s at %s epochs, cost flat from epoch %s", i,
                 len(points), row["noise_model"], row["tv_weight"], row["step_size"], row["ms_ssim_phase"],
                 row["epochs"], row["flat_from_epoch"])
    scored = [r for r in grid if r["ms_ssim_phase"] is not None]
    if not scored:
        raise ContractError("tune: no grid point gave a scored reconstruction: "
                            + "; ".join(f"{r['noise_model']}/{r['tv_weight']}/{r['step_size']}: {r['error']}" for r in grid))
    best = max(scored, key=lambda r: r["ms_ssim_phase"])  # max keeps the first of equals
    return {"criterion": "phase MS-SSIM against the training split's own truth (aligned as in phase G)",
            "n_positions": train.n, "max_epochs": cfg.epochs, "score_every": cfg.tune.score_every, "grid": grid,
            "chosen": {k: best[k] for k in ("noise_model", "tv_weight", "step_size", "epochs")}}
