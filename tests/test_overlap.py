"""Phase D: disc overlap, Poisson-disc views, neighbour groups and overlap metrics."""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from fly64study.design import ParamsError
from fly64study.overlap import build_view, cover_positions, disc_overlap, group_positions, select_view, view_metrics
from fly64study.simulate import generate_dose


def _scan(n=2000, size=300.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, size, n), rng.uniform(0, size, n)


def test_disc_overlap_formula():
    D = 20.0
    assert disc_overlap(0.0, D) == pytest.approx(1.0)
    assert disc_overlap(D / 2, D) == pytest.approx(0.391, abs=5e-4)
    assert disc_overlap(D / 2, D) == pytest.approx((2 * math.pi / 3 - math.sqrt(3) / 2) / math.pi)
    assert disc_overlap(D, D) == pytest.approx(0.0, abs=1e-12)
    assert disc_overlap(3 * D, D) == 0.0
    d = np.linspace(0, D, 50)
    assert np.all(np.diff(disc_overlap(d, D)) < 0)  # strictly decreasing with distance


def test_disc_overlap_matches_a_pixel_count():
    D, d = 80.0, 30.0
    yy, xx = np.indices((200, 200)) + 0.5
    a = np.hypot(yy - 100, xx - 100) <= D / 2
    b = np.hypot(yy - 100, xx - 100 - d) <= D / 2
    assert disc_overlap(d, D) == pytest.approx((a & b).sum() / a.sum(), abs=0.01)


@pytest.mark.parametrize("spacing", [3.0, 8.0, 15.0])
def test_view_spacing_is_at_least_S(spacing):
    x, y = _scan()
    kept = select_view(x, y, spacing, seed=456)
    pts = np.column_stack([x, y])[kept]
    dist, _ = cKDTree(pts).query(pts, k=2)
    assert dist[:, 1].min() >= spacing
    # maximal: every dropped position lies closer than S to a kept one
    dropped = np.setdiff1d(np.arange(len(x)), kept)
    d_drop, _ = cKDTree(pts).query(np.column_stack([x, y])[dropped], k=1)
    assert np.all(d_drop < spacing)


def test_view_is_deterministic_per_seed():
    x, y = _scan()
    a = select_view(x, y, 8.0, seed=456)
    np.testing.assert_array_equal(a, select_view(x, y, 8.0, seed=456))
    assert not np.array_equal(a, select_view(x, y, 8.0, seed=457))


def test_non_positive_spacing_is_refused():
    x, y = _scan(10)
    with pytest.raises(ValueError, match="spacing: S = 0.0 must be positive"):
        select_view(x, y, 0.0, seed=1)


def test_dense_keeps_more_and_overlaps_more_than_sparse():
    x, y = _scan()
    D = 24.0
    out = {}
    for name, f in (("dense", 0.7), ("sparse", 0.2)):
        kept = select_view(x, y, (1 - f) * D, seed=456)
        out[name] = view_metrics(x, y, kept, D=D, neighbor_count=7, seed=123)
    assert out["dense"]["kept"] > out["sparse"]["kept"]
    for key in ("overlap_per_image", "overlap_per_group", "overlap_group_to_group"):
        assert out["dense"][key] > out["sparse"][key]
    assert out["sparse"]["min_nn_spacing_px"] >= 0.8 * D
    assert out["dense"]["acceptance_rate"] == out["dense"]["kept"] / 2000


@pytest.mark.parametrize("gridsize", [1, 2, 3])
def test_groups_hold_distinct_members_within_the_k_nearest(gridsize):
    x, y = _scan(500)
    K, C = 9, gridsize * gridsize
    g = group_positions(x, y, gridsize=gridsize, neighbor_count=K, seed=123)
    assert g.indices.shape == (500, C) and g.offsets.shape == (500, C, 2)
    assert sorted(g.indices[:, 0]) == list(range(500))  # one group per seed position
    pts = np.column_stack([x, y])
    _, nbrs = cKDTree(pts).query(pts, k=K + 1)
    for row in g.indices:
        assert len(set(row)) == C
        assert set(row) <= set(nbrs[row[0]])
    np.testing.assert_allclose(g.offsets.mean(axis=1), 0.0, atol=1e-9)
    np.testing.assert_allclose(pts[g.indices] - g.centres[:, None, :], g.offsets)


def test_groups_are_deterministic_per_seed():
    x, y = _scan(300)
    a = group_positions(x, y, gridsize=2, neighbor_count=7, seed=123)
    b = group_positions(x, y, gridsize=2, neighbor_count=7, seed=123)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, group_positions(x, y, gridsize=2, neighbor_count=7, seed=1).indices)


def test_oversampling_gives_distinct_groups_per_seed():
    x, y = _scan(100)
    g = group_positions(x, y, gridsize=2, neighbor_count=7, seed=123, n_groups=1000)
    assert g.indices.shape == (1000, 4)
    keys = {(row[0], frozenset(row[1:])) for row in g.indices}
    assert len(keys) == 1000
    counts = np.bincount(g.indices[:, 0], minlength=100)
    assert counts.min() == counts.max() == 10
    assert len(list(combinations(range(7), 3))) * 100 >= 1000


def test_oversampling_error_messages():
    x, y = _scan(100)
    with pytest.raises(ValueError, match="oversampling .* needs gridsize > 1 .* Lower n_groups to <= 100"):
        group_positions(x, y, gridsize=1, neighbor_count=7, seed=123, n_groups=101)
    with pytest.raises(ValueError, match="at most 3500 distinct groups"):
        group_positions(x, y, gridsize=2, neighbor_count=7, seed=123, n_groups=3501)
    with pytest.raises(ValueError, match="K=3 < C=4"):
        group_positions(x, y, gridsize=2, neighbor_count=3, seed=123)
    with pytest.raises(ValueError, match="only 3 positions: gridsize 2 groups need at least C = 4"):
        group_positions(x[:3], y[:3], gridsize=2, neighbor_count=7, seed=123)


def test_few_positions_draw_neighbours_from_all_others():
    x, y = _scan(5)
    g = group_positions(x, y, gridsize=2, neighbor_count=7, seed=123)
    assert g.indices.shape == (5, 4)
    assert all(len(set(row)) == 4 for row in g.indices)


def test_build_view_records_the_transformation(tiny):
    train, _ = generate_dose(tiny.design, tiny.generate, "1e3")
    view, metrics = build_view(train, view="dense", fraction=0.7, neighbor_count=7, subsampling_seed=456,
                               grouping_seed=123, min_positions=8)
    record = view.metadata["transformations"][-1]
    assert record["op"] == "overlap_view" and record["view"] == "dense"
    assert record["spacing_px"] == pytest.approx(0.3 * record["probe_diameter90_px"])
    assert record["kept"] == view.n == metrics["kept"] and record["total"] == train.n
    assert view.Y.shape[0] == view.n


def test_a_view_too_sparse_to_train_is_an_error(tiny):
    train, _ = generate_dose(tiny.design, tiny.generate, "1e3")
    with pytest.raises(ParamsError, match=r"view 'sparse' \(train split\): spacing S = .* kept \d+ of \d+ positions"):
        build_view(train, view="sparse", fraction=0.2, neighbor_count=7, subsampling_seed=456,
                   grouping_seed=123, min_positions=1000)


def test_baseline_view_keeps_the_split_and_refuses_too_few(tiny):
    train, _ = generate_dose(tiny.design, tiny.generate, "1e3")
    view, metrics = build_view(train, view="baseline", fraction=None, neighbor_count=7, subsampling_seed=456,
                               grouping_seed=123, min_positions=8)
    assert view is train and metrics["kept"] == train.n and metrics["spacing_px"] is None
    with pytest.raises(ParamsError, match=r"view 'baseline' \(train split\): keeping every position kept"):
        build_view(train, view="baseline", fraction=None, neighbor_count=7, subsampling_seed=456,
                   grouping_seed=123, min_positions=10_000)


def test_covering_groups_hold_every_position_once_among_near_neighbours():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 200, 300), rng.uniform(0, 200, 300)
    groups, keep = cover_positions(x, y, gridsize=2, neighbor_count=7, seed=5)
    assert groups.indices.shape[1] == 4 and keep.shape == groups.indices.shape and keep[:, 0].all()
    np.testing.assert_array_equal(np.sort(groups.indices[keep]), np.arange(300))  # each position kept once
    assert len(groups.indices) < 0.4 * 300  # about n / C groups
    pts = np.column_stack([x, y])
    _, nbrs = cKDTree(pts).query(pts, k=8)
    for members in groups.indices:  # members are among the seed's K nearest, as in training
        assert set(members[1:]) <= set(nbrs[members[0], 1:])
    again, _ = cover_positions(x, y, gridsize=2, neighbor_count=7, seed=5)
    np.testing.assert_array_equal(again.indices, groups.indices)
    single, keep1 = cover_positions(x, y, gridsize=1, neighbor_count=7, seed=5)
    assert keep1.all() and sorted(single.indices[:, 0]) == list(range(300))
