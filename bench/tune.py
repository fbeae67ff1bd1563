"""tune@<dose>-<view>'s grid one point after another against side by side (one process per core), in one run.

Reads the pipeline's phase D training split (run `dvc repro` first); prints both wall times, the
host, and whether the two grids are equal (they must be: each LSQML run is single-threaded).

    python bench/tune.py [--dose 1e3] [--view dense]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fly64study.contract import load_dataset
from fly64study.design import load_params
from fly64study.numerics import host, pin_torch
from fly64study.tuning import tune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dose", default="1e3")
    parser.add_argument("--view", default="dense", help="whose training split (tune@<dose>-<view>'s)")
    args = parser.parse_args()
    params = load_params("params.yaml")
    cfg = params.reconstruct
    path = Path("data/phase_d") / f"dose_{args.dose}" / args.view / "train.npz"
    if not path.is_file():
        sys.exit(f"{path}: missing; run `dvc repro` first")
    train = load_dataset(path)
    pin_torch(True, threads=1)
    times, grids = {}, {}
    for workers in (1, None):
        t0 = time.perf_counter()
        grids[workers] = tune(train, cfg, max_shift=params.design.metrics.max_shift_px, workers=workers)["grid"]
        times[workers] = time.perf_counter() - t0
    h = host()
    print(f"tune@{args.dose}-{args.view}: {len(grids[1])} grid points of {cfg.epochs} LSQML epochs on {train.n} positions; "
          f"host {h['cpu']}, {h['cores']} cores")
    print(f"  one after another: {times[1]:.1f} s")
    print(f"  side by side:      {times[None]:.1f} s ({times[1] / times[None]:.2f}x)")
    print(f"  same grid, scores and costs: {grids[1] == grids[None]}")


if __name__ == "__main__":
    main()
