"""A dataset's patterns as the networks see them: groups of positions, counts, and their thinning.

Shared by training (:mod:`fly64study.train`), the likelihood gap (:mod:`fly64study.likelihood`) and
inference: how groups are indexed, how counts are recovered from the stored amplitudes, how a
count-thinning split is drawn, and which groups a no-grad pass computes together.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fly64study.contract import Dataset
from fly64study.model import canvas_length
from fly64study.overlap import group_positions

_INFER_BATCH = 64


@dataclass(frozen=True)
class Groups:
    """A dataset's groups as tensors: amplitudes and counts are indexed through ``indices``."""

    indices: torch.Tensor  # (G, C) int64
    offsets: torch.Tensor  # (G, C, 2) float32, (dx, dy) pixels


def counts_of(ds: Dataset) -> torch.Tensor:
    """Measured photon counts, (d * s)^2, recovered exactly from the stored amplitudes."""
    s = ds.metadata["intensity_scale"]
    return torch.from_numpy(np.round((ds.diffraction.astype(np.float64) * s) ** 2).astype(np.float32))


def make_groups(xcoords: np.ndarray, ycoords: np.ndarray, *, gridsize: int, neighbor_count: int, seed: int,
                n_groups: int | None = None) -> Groups:
    g = group_positions(xcoords, ycoords, gridsize=gridsize, neighbor_count=neighbor_count, seed=seed,
                        n_groups=n_groups)
    return Groups(indices=torch.from_numpy(g.indices), offsets=torch.from_numpy(g.offsets.astype(np.float32)))


def thin(counts: torch.Tensor, thinning: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) counts: a binomial share ``thinning`` of each count and the rest (p = 0: all, all)."""
    if thinning <= 0:
        return counts, counts
    seen = torch.binomial(counts, torch.full_like(counts, thinning), generator=generator)
    return seen, counts - seen


def thinned_amplitude(seen: torch.Tensor, thinning: float, scale: float) -> torch.Tensor:
    """The network's input from a thinned share of the counts: sqrt(seen / p) / s, amplitudes on the
    full counts' scale. The square root in float64: float32 torch.sqrt's bits differed between CPUs
    (MKL's vector maths; bench/cross_cpu.py); any faithfully rounded float64 root rounds to the
    correctly rounded float32 one, the same on every CPU."""
    return torch.sqrt((seen / thinning).double()).float() / scale


def inference_chunks(offsets: torch.Tensor, N: int) -> list[torch.Tensor]:
    """Which groups (rows of ``offsets``, (G, C, 2)) a no-grad pass computes together: chunks of
    at most ``_INFER_BATCH`` groups that need the same canvas (:func:`fly64study.model.canvas_length`).

    A batch's canvas is as wide as its widest group. In chunks taken in order, one far-flung group
    made the 38 others of a dense validation set pay for a 250-pixel canvas (1.2 s of a 9 s
    epoch: bench/LOG.md), and a group's patches depended on which groups shared its chunk.
    Here they do not, up to the batch size's rounding. (A training batch is random, so its
    canvas still follows its widest group.)"""
    extent = offsets.abs().flatten(1).amax(dim=1).tolist()
    lengths = torch.tensor([canvas_length(N, e) for e in extent], dtype=torch.long)
    return [chunk for length in torch.unique(lengths)
            for chunk in torch.split(torch.nonzero(lengths == length).flatten(), _INFER_BATCH)]
