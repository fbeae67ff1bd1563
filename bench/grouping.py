"""Phase D throughput: neighbour grouping and Poisson-disc view selection for 10,000 positions."""
from __future__ import annotations

import fly64study  # noqa: F401  (pins the numerics: before numpy and torch load)
import numpy as np

from _timing import best_of
from fly64study.overlap import group_positions, select_view, view_metrics

N_POSITIONS, K, GRIDSIZE, D = 10_000, 7, 2, 50.0


def main() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.uniform(64, 1088, N_POSITIONS), rng.uniform(64, 1088, N_POSITIONS)
    print(f"# grouping: {N_POSITIONS:,} random positions, K = {K}, C = {GRIDSIZE ** 2}, D = {D} px")
    print("| operation | seconds (best of 5) |")
    print("|---|---|")
    t = best_of(lambda: group_positions(x, y, gridsize=GRIDSIZE, neighbor_count=K, seed=123), 5)
    print(f"| group_positions, one group per position | {t:.4f} |")
    t = best_of(lambda: group_positions(x, y, gridsize=GRIDSIZE, neighbor_count=K, seed=123,
                                        n_groups=5 * N_POSITIONS), 5)
    print(f"| group_positions, 5× oversampled (50,000 groups) | {t:.4f} |")
    for name, f in (("dense", 0.7), ("sparse", 0.2)):
        t = best_of(lambda: select_view(x, y, (1 - f) * D, seed=456), 5)
        kept = select_view(x, y, (1 - f) * D, seed=456)
        tm = best_of(lambda: view_metrics(x, y, kept, D=D, neighbor_count=K, seed=123), 5)
        print(f"| select_view {name} (kept {len(kept):,}) | {t:.4f} |")
        print(f"| view_metrics {name} | {tm:.4f} |")


if __name__ == "__main__":
    main()
