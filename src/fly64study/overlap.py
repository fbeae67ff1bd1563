"""Phase D: overlap views of a scan, the groups the PINN trains on, and overlap metrics.

A view keeps a greedy Poisson-disc subset of a split whose nearest-neighbour spacing is at
least S = (1 - f) D, D the probe's 90 %-intensity diameter (``physics.probe_diameter``). Groups
for gridsize g hold C = g^2 positions: a seed and C - 1 of its K nearest neighbours.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.spatial import cKDTree

from fly64study import physics
from fly64study.contract import Dataset
from fly64study.design import ParamsError


# ------------------------------------------------------------------------- disc overlap
def disc_overlap(d: np.ndarray | float, D: float) -> np.ndarray:
    """Fraction of a disc of diameter ``D`` covered by an equal disc whose centre is ``d`` away.

    The lens area of two circles of radius r at distance d over the disc area pi r^2:
    (2 r^2 acos(d / 2r) - (d / 2) sqrt(4 r^2 - d^2)) / (pi r^2). f(0) = 1, f(D/2) = 0.391, f(>= D) = 0.
    """
    if not D > 0:
        raise ValueError(f"probe diameter D must be positive, got {D}")
    r = D / 2.0
    d = np.minimum(np.abs(np.asarray(d, dtype=np.float64)), D)
    lens = 2 * r * r * np.arccos(d / (2 * r)) - 0.5 * d * np.sqrt(np.maximum(4 * r * r - d * d, 0.0))
    return lens / (math.pi * r * r)


# ------------------------------------------------------------------------ view selection
def select_view(xcoords: np.ndarray, ycoords: np.ndarray, spacing: float, seed: int) -> np.ndarray:
    """Greedy Poisson-disc subset: visit positions in a seeded random order, keep one if it lies at
    least ``spacing`` from every position kept so far.

    Returns
    -------
    (k,) int64 indices of the kept positions, sorted ascending (scan order).
    """
    if not spacing > 0:
        raise ValueError(
            f"spacing: S = {spacing} must be positive; it is (1 - f) * D with overlap fraction f in [0, 1)"
        )
    pts = np.column_stack([xcoords, ycoords])
    order = np.random.default_rng(seed).permutation(len(pts))
    # A grid of cells of side S: a kept point can conflict only with kept points in the 3x3 cells around it.
    cell = np.floor(pts / spacing).astype(np.int64)
    grid: dict[tuple[int, int], list[int]] = {}
    kept = []
    s2 = spacing * spacing
    for i in order:
        cx, cy = cell[i]
        ok = True
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in grid.get((cx + dx, cy + dy), ()):
                    if (pts[i, 0] - pts[j, 0]) ** 2 + (pts[i, 1] - pts[j, 1]) ** 2 < s2:
                        ok = False
                        break
                if not ok:
                    break
            if not ok:
                break
        if ok:
            kept.append(i)
            grid.setdefault((cx, cy), []).append(i)
    return np.sort(np.asarray(kept, dtype=np.int64))


# ------------------------------------------------------------------------------ grouping
@dataclass(frozen=True)
class Groups:
    indices: np.ndarray  # (G, C) int64, member positions; column 0 is the seed
    offsets: np.ndarray  # (G, C, 2) float64, (dx, dy) of each member from the group centre, pixels
    centres: np.ndarray  # (G, 2) float64, (x, y) mean of the members' positions


def group_positions(
    xcoords: np.ndarray,
    ycoords: np.ndarray,
    *,
    gridsize: int,
    neighbor_count: int,
    seed: int,
    n_groups: int | None = None,
) -> Groups:
    """Groups of C = gridsize^2 positions: each seed with C - 1 of its K nearest neighbours.

    Seeds are visited in a seeded random order. With ``n_groups`` up to the number of positions
    each group has its own seed; beyond it (K-choose-C oversampling) every seed contributes
    several distinct neighbour combinations, which needs C > 1 and K >= C.

    Parameters
    ----------
    xcoords, ycoords : (n,) float64 positions, pixels
    gridsize : g, so C = g^2
    neighbor_count : K
    seed : grouping seed (design.seeds.grouping)
    n_groups : number of groups; default one per position
    """
    n = len(xcoords)
    C, K = gridsize * gridsize, neighbor_count
    n_groups = n if n_groups is None else n_groups
    if n_groups < 1:
        raise ValueError(f"n_groups: must be >= 1, got {n_groups}")
    if K < C:
        raise ValueError(f"neighbor_count: K={K} < C={C}; K-choose-C grouping needs K >= C")
    if n < C:
        raise ValueError(f"only {n} positions: gridsize {gridsize} groups need at least C = {C}")
    K = min(K, n - 1)  # fewer than K + 1 positions: each seed draws from all the others
    combo_list = list(combinations(range(K), C - 1))
    combos = np.array(combo_list, dtype=np.int64).reshape(len(combo_list), C - 1)
    per_seed = math.ceil(n_groups / n)
    if per_seed > 1 and C == 1:
        raise ValueError(
            f"n_groups={n_groups} exceeds the {n} positions; oversampling draws several K-choose-C groups per "
            f"seed, which needs gridsize > 1 and neighbor_count >= C (got gridsize={gridsize}, K={K}). "
            f"Lower n_groups to <= {n}"
        )
    if per_seed > len(combos):
        raise ValueError(
            f"n_groups={n_groups}: at most {n * len(combos)} distinct groups exist for {n} positions with "
            f"K={K}, C={C}; lower n_groups"
        )
    pts = np.column_stack([xcoords, ycoords])
    rng = np.random.default_rng(seed)
    seeds = rng.permutation(n)
    # Per seed, a random order of its neighbour combinations; take the first per_seed of them.
    combo_pick = np.argsort(rng.random((n, len(combos))), axis=1)[:, :per_seed]  # (n, per_seed)
    rank = np.repeat(np.arange(per_seed), n)[:n_groups]  # round r gives every seed its r-th combination
    seed_idx = np.tile(seeds, per_seed)[:n_groups]
    if C > 1:
        _, nbrs = cKDTree(pts).query(pts, k=K + 1)  # (n, K + 1), column 0 is the point itself
        chosen = combos[combo_pick[seed_idx, rank]]  # (G, C - 1) into the K neighbours
        members = np.take_along_axis(nbrs[seed_idx, 1:], chosen, axis=1)
        indices = np.column_stack([seed_idx, members])
    else:
        indices = seed_idx[:, None]
    member_pts = pts[indices]  # (G, C, 2)
    centres = member_pts.mean(axis=1)
    return Groups(indices=indices.astype(np.int64), offsets=member_pts - centres[:, None, :], centres=centres)


def block_split(xcoords: np.ndarray, ycoords: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) position indices, sorted: the held-out ones are one compact block, the
    ``round(fraction * n)`` positions (at least one) nearest a position drawn with ``seed``.

    Groups formed inside such a block have the scan's own spacing, as training's do; groups drawn
    among positions held out at random would not (in the default dense view: members 49 px apart
    against training's 17 px, beyond the 24 px probe, so a loss over them could not see the overlap).
    """
    n = len(xcoords)
    n_out = min(n, max(1, int(round(fraction * n))))
    pts = np.column_stack([xcoords, ycoords])
    centre = np.random.default_rng(seed).integers(n)
    dist = np.hypot(*(pts - pts[centre]).T)
    held = np.sort(np.argsort(dist, kind="stable")[:n_out])
    return np.setdiff1d(np.arange(n), held), held


def member_distances(offsets: np.ndarray) -> dict:
    """How tight groups are: the mean distance between two members of a group (all pairs) and
    from a member to its group's centre, pixels, over groups with offsets (G, C, 2); None for
    groups of one. With ``groups``, the number of groups."""
    G, C = offsets.shape[:2]
    if C < 2 or G == 0:
        return {"groups": int(G), "mean_member_distance_px": None, "mean_distance_from_centre_px": None}
    a, b = np.triu_indices(C, k=1)
    pair = np.linalg.norm(offsets[:, a] - offsets[:, b], axis=-1)
    return {"groups": int(G), "mean_member_distance_px": round(float(pair.mean()), 6),
            "mean_distance_from_centre_px": round(float(np.linalg.norm(offsets, axis=-1).mean()), 6)}


def cover_positions(xcoords: np.ndarray, ycoords: np.ndarray, *, gridsize: int, neighbor_count: int,
                    seed: int) -> tuple[Groups, np.ndarray]:
    """Groups that hold every position, for inference, where each member's patch is kept.

    Seeds are visited in a seeded random order; a position not yet in a group seeds one with
    up to C - 1 of its K nearest neighbours that are not in one either, the nearest already placed
    ones filling the rest (so offsets stay those training saw). About n / C groups instead of n.

    Returns the groups and ``keep`` (G, C) bool: True where the member is that position's one
    kept patch (every position exactly once).
    """
    n, C = len(xcoords), gridsize * gridsize
    if C == 1:
        g = group_positions(xcoords, ycoords, gridsize=1, neighbor_count=neighbor_count, seed=seed)
        return g, np.ones((n, 1), bool)
    if n < C or neighbor_count < C:
        raise ValueError(f"{n} positions, neighbor_count K={neighbor_count}: gridsize {gridsize} groups need "
                         f"at least C = {C} of each")
    pts = np.column_stack([xcoords, ycoords])
    _, nbrs = cKDTree(pts).query(pts, k=min(neighbor_count, n - 1) + 1)  # column 0 is the point itself
    placed = np.zeros(n, bool)
    indices, keep = [], []
    for s in np.random.default_rng(seed).permutation(n):
        if placed[s]:
            continue
        near = nbrs[s, 1:]
        free = near[~placed[near]][:C - 1]
        members = np.concatenate([[s], free, near[placed[near]][:C - 1 - len(free)]])
        keep.append(np.arange(C) <= len(free))
        placed[members] = True
        indices.append(members)
    indices = np.array(indices, dtype=np.int64)
    member_pts = pts[indices]
    centres = member_pts.mean(axis=1)
    return Groups(indices=indices, offsets=member_pts - centres[:, None, :], centres=centres), np.array(keep)


# ------------------------------------------------------------------------------- metrics
def _mean_knn_overlap(pts: np.ndarray, k: int, D: float) -> tuple[float | None, float | None, float | None]:
    """Mean disc overlap with the k nearest neighbours; also min and mean nearest-neighbour distance.

    None where undefined (fewer than two positions): JSON has no NaN.
    """
    if len(pts) < 2:
        return None, None, None
    k = min(k, len(pts) - 1)
    dist, _ = cKDTree(pts).query(pts, k=k + 1)
    dist = dist[:, 1:]
    return float(disc_overlap(dist, D).mean()), float(dist[:, 0].min()), float(dist[:, 0].mean())


def view_metrics(
    xcoords: np.ndarray,
    ycoords: np.ndarray,
    kept: np.ndarray,
    *,
    D: float,
    neighbor_count: int,
    seed: int,
    gridsize: int = 2,
) -> dict:
    """Overlap metrics of one split's view.

    ``overlap_per_image``: disc overlap averaged over each kept position's K nearest kept
    neighbours; ``overlap_per_group``: between members of each gridsize-2 group (all pairs);
    ``overlap_group_to_group``: between each group centre and its K nearest other centres.
    """
    pts = np.column_stack([xcoords, ycoords])[kept]
    per_image, min_nn, mean_nn = _mean_knn_overlap(pts, neighbor_count, D)
    out = {
        "kept": int(len(kept)),
        "total": int(len(xcoords)),
        "acceptance_rate": float(len(kept) / len(xcoords)) if len(xcoords) else 0.0,
        "overlap_per_image": per_image,
        "min_nn_spacing_px": min_nn,
        "mean_nn_spacing_px": mean_nn,
    }
    C = gridsize * gridsize
    if len(pts) >= C:
        groups = group_positions(pts[:, 0], pts[:, 1], gridsize=gridsize, neighbor_count=neighbor_count, seed=seed)
        members = pts[groups.indices]  # (G, C, 2)
        a, b = np.triu_indices(C, k=1)
        pair_d = np.linalg.norm(members[:, a] - members[:, b], axis=-1)
        out["overlap_per_group"] = float(disc_overlap(pair_d, D).mean())
        out["overlap_group_to_group"] = _mean_knn_overlap(groups.centres, neighbor_count, D)[0]
    else:
        out["overlap_per_group"] = None  # too few positions for a group
        out["overlap_group_to_group"] = None
    return out


# ------------------------------------------------------------------------------ phase D
def build_view(
    split: Dataset,
    *,
    view: str,
    fraction: float | None,
    neighbor_count: int,
    subsampling_seed: int,
    grouping_seed: int,
    min_positions: int,
) -> tuple[Dataset, dict]:
    """The view ``view`` of one phase C split, and its overlap metrics.

    ``fraction`` f selects a Poisson-disc subset with spacing S = (1 - f) D; ``None`` keeps every
    position and returns the split itself, unchanged (the baseline's full random scan).
    """
    part = split.metadata.get("split", "?")
    D = physics.probe_diameter(split.probeGuess)
    if fraction is None:
        S, kept, rule = None, np.arange(split.n), "keeping every position"
    else:
        S = (1.0 - fraction) * D
        kept = select_view(split.xcoords, split.ycoords, S, subsampling_seed)
        rule = f"spacing S = {S:.2f} px (f = {fraction}, D = {D:.2f} px)"
    if len(kept) < min_positions:
        raise ParamsError(
            f"view {view!r} ({part} split): {rule} kept {len(kept)} of {split.n} positions, fewer than "
            f"overlap.min_positions = {min_positions}; scan more positions (generate.n_positions) or raise "
            "the view's overlap fraction"
        )
    metrics = view_metrics(split.xcoords, split.ycoords, kept, D=D, neighbor_count=neighbor_count,
                           seed=grouping_seed)
    metrics.update(probe_diameter90_px=D, spacing_px=S)
    if fraction is None:
        return split, metrics
    record = {"op": "overlap_view", "view": view, "overlap_fraction": fraction, "probe_diameter90_px": D,
              "spacing_px": S, "seed": subsampling_seed, "kept": int(len(kept)), "total": split.n}
    return split.subset(kept, record), metrics
