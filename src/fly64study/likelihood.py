"""The likelihood gap: how close a trained network's fit of its own training counts comes to the truth's.

On a job's training split, with groups formed as training forms them (one per position, the
grouping seed), three objects predict every member's counts through the known probe and far field:
the network's patches (from the group's amplitudes, on the group's canvas), the true patches ``Y``
and a flat object (the one constant transmission that fits the counts best, in closed form: it
reads no truth). Their mean Poisson NLL per pixel (log k! dropped, as in training) gives the share
of the flat-to-truth gap the network closes:

    closed = (NLL_flat - NLL_network) / (NLL_flat - NLL_truth)

100 % is the truth's fit. It is scored twice: on the full counts (input and target the same
counts), and on a count-thinning split (input: a binomial share ``thinning`` of each pattern,
target: the independent rest, as training scores), where a network that reproduces the noise it
sees cannot score above the truth: on full counts it could close more than 100 %.

Only the training split is read: the study chooses settings on it or on validation loss, never on
the test split.
"""
from __future__ import annotations

import math

import torch

from fly64study import physics
from fly64study.contract import Dataset
from fly64study.grouped import counts_of, inference_chunks, make_groups, thin, thinned_amplitude

_EPS = 1e-6  # as model.poisson_nll


def _nll_sum(predicted: torch.Tensor, counts: torch.Tensor, scale: float) -> float:
    lam = (scale * predicted.double()) ** 2
    return float((lam - counts.double() * torch.log(lam + _EPS)).sum())


def _flat_nll_sum(unit: torch.Tensor, counts: torch.Tensor, scale: float, members: int) -> float:
    """NLL of the best constant transmission a: lambda = (s a |F P|)^2, a^2 = sum k / sum (s |F P|)^2."""
    per_pattern = float(((scale * unit.double()) ** 2).sum())
    a2 = float(counts.double().sum()) / (per_pattern * members)
    lam = a2 * (scale * unit.double()) ** 2
    return float((members * lam - counts.double().sum(dim=0) * torch.log(lam + _EPS)).sum())


def _shares(net: float, truth: float, flat: float, group_pixels: int) -> dict:
    gap = flat - truth
    return {"nll_network": net, "nll_truth": truth, "nll_flat": flat,
            "network_minus_truth": net - truth, "flat_minus_truth": gap,
            "network_minus_truth_nats_per_group": (net - truth) * group_pixels,
            "closed": (flat - net) / gap if gap > 0 else None}


def likelihood_gap(net: torch.nn.Module, ds: Dataset, *, neighbor_count: int, grouping_seed: int, thinning: float,
                   seed: int, device: torch.device | str = "cpu") -> dict:
    """The gap on ``ds`` (a training split) for ``net`` (an inference network: ``net.cfg``,
    ``net.probe``); ``seed`` draws the thinning split. Mean NLL per pixel of each object, its excess
    over the truth's (also in nats per group), and the share closed, under ``full_counts`` and
    ``thinned``; ``{"status": ...}`` alone where the split has no true patches ``Y``."""
    if ds.Y is None:
        return {"status": "no ground truth (Y) in the training split"}
    cfg = net.cfg
    groups = make_groups(ds.xcoords, ds.ycoords, gridsize=cfg.gridsize, neighbor_count=neighbor_count,
                         seed=grouping_seed)
    s = cfg.intensity_scale
    probe = net.probe.to(device)
    counts = counts_of(ds)
    seen, target = thin(counts, thinning, torch.Generator().manual_seed(seed))
    inputs = {"full_counts": (torch.from_numpy(ds.diffraction), counts, s),
              "thinned": (thinned_amplitude(seen, thinning, s), target, s * math.sqrt(1.0 - thinning))}
    truth = physics.diffraction_amplitude(torch.from_numpy(ds.Y).to(device), probe).cpu()  # (n, N, N)
    unit = physics.diffraction_amplitude(torch.ones_like(probe), probe).cpu()  # a transparent object's
    members = groups.indices.numel()
    pixels = members * ds.N * ds.N
    out = {"status": "completed", "groups": len(groups.indices), "split_positions": ds.n, "thinning": thinning}
    net = net.to(device).eval()
    for name, (amp, k, scale) in inputs.items():
        sums = {"network": 0.0, "truth": 0.0}
        used = torch.zeros_like(k[:1], dtype=torch.float64)  # the members' counts, summed pixel by pixel
        with torch.no_grad():
            for chunk in inference_chunks(groups.offsets, ds.N):
                idx = groups.indices[chunk]
                patches = net(amp[idx].to(device), groups.offsets[chunk].to(device))
                predicted = physics.diffraction_amplitude(patches, probe).cpu()
                sums["network"] += _nll_sum(predicted, k[idx], scale)
                sums["truth"] += _nll_sum(truth[idx], k[idx], scale)
                used += k[idx].double().reshape(-1, ds.N, ds.N).sum(dim=0, keepdim=True)
        flat = _flat_nll_sum(unit, used, scale, members)
        out[name] = _shares(sums["network"] / pixels, sums["truth"] / pixels, flat / pixels, cfg.C * ds.N * ds.N)
    return out


def gap_closed(gap: dict) -> dict:
    """The two shares a metrics file lists: ``likelihood_gap_closed`` (full counts) and
    ``likelihood_gap_closed_thinned``; none where the gap was not scored."""
    if gap.get("status") != "completed":
        return {}
    return {"likelihood_gap_closed": gap["full_counts"]["closed"],
            "likelihood_gap_closed_thinned": gap["thinned"]["closed"]}
