"""Phase F, before the baseline runs: LSQML's settings per dose, chosen on training data.

The iterative baseline deserves the same care as the network, and the same rule: nothing is
chosen on the test split. ``tune@<dose>`` runs LSQML over the grid of ``reconstruct.tune``
(noise model × total-variation weight × step size) on the *training* split of one view, scores
each object by its phase MS-SSIM against that split's own ground truth (aligned exactly as phase
G aligns), and keeps the best; ``reconstruct@<dose>-<view>`` then runs that choice on the test
split. Ties go to the earlier grid point (the order of the params lists), so the choice is
reproducible. Each run's cost curve is kept too: its last epochs show whether
``reconstruct.epochs`` was enough (``flat_from_epoch``).
"""
from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np

from fly64study import metrics
from fly64study.contract import ContractError, Dataset
from fly64study.design import Reconstruct
from fly64study.iterative import Choice, final_cost, lsqml

log = logging.getLogger(__name__)

FLAT = 1e-3  # a cost curve is flat from the first epoch after which no epoch lowers it by more than this share


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


def tune(train: Dataset, cfg: Reconstruct, *, max_shift: float, device: str = "cpu",
         deterministic: bool = True) -> dict:
    """Every grid point of ``cfg.tune`` on ``train`` (a training split, with its ``objectGuess``);
    returns the grid with scores, costs and the chosen point (``chosen``: a :class:`Choice`'s fields)."""
    if train.objectGuess is None or not np.any(train.objectGuess):
        raise ContractError("tune: the training split has no ground truth (objectGuess) to score against")
    grid = []
    points = list(itertools.product(cfg.tune.noise_models, cfg.tune.tv_weights, cfg.tune.step_sizes))
    for i, (noise, tv, step) in enumerate(points, 1):
        choice = Choice(noise_model=noise, tv_weight=tv, step_size=step)
        result = lsqml(train, cfg, device=device, deterministic=deterministic, choice=choice)
        row = {"noise_model": noise, "tv_weight": tv, "step_size": step, "status": result.status,
               "error": result.error, "final_cost": final_cost(result), "flat_from_epoch": flat_from(result.cost),
               "ms_ssim_phase": None}
        if result.status == "completed":  # a refused registration is scored unshifted, as in phase G
            row["ms_ssim_phase"] = score(result.object, train, max_shift)
        log.info("tune %d/%d: %s, tv %g, step %g: phase MS-SSIM %s, flat from epoch %s", i, len(points), noise, tv,
                 step, row["ms_ssim_phase"], row["flat_from_epoch"])
        grid.append(row)
    scored = [r for r in grid if r["ms_ssim_phase"] is not None]
    if not scored:
        raise ContractError("tune: no grid point gave a scored reconstruction: "
                            + "; ".join(f"{r['noise_model']}/{r['tv_weight']}/{r['step_size']}: {r['error']}" for r in grid))
    best = max(scored, key=lambda r: r["ms_ssim_phase"])  # max keeps the first of equals
    return {"criterion": "phase MS-SSIM against the training split's own truth (aligned as in phase G)",
            "n_positions": train.n, "epochs": cfg.epochs, "grid": grid,
            "chosen": {k: best[k] for k in ("noise_model", "tv_weight", "step_size")}}


def load_choice(path: str | Path) -> Choice:
    """The choice a ``lsqml_tuning.json`` recorded."""
    try:
        chosen = json.loads(Path(path).read_text())["chosen"]
        return Choice(noise_model=str(chosen["noise_model"]), tv_weight=float(chosen["tv_weight"]),
                      step_size=float(chosen["step_size"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ContractError(f"{path}: cannot read the LSQML tuning ({err}); run `dvc repro tune@<dose>`") from None
