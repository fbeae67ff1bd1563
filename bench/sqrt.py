"""What exact_sqrt costs LSQML: one pty-chi run with its float32 square roots correctly rounded
(the pipeline's: :func:`fly64study.numerics.exact_sqrt`) against torch's own (MKL's, whose bits
follow the CPU), alternating, on one thread as phase F runs.

    .venv/bin/python bench/sqrt.py [--dose 1e3] [--view dense] [--rounds 3]

Reads the pipeline's phase D test split (run `dvc repro` first) and the LSQML settings tune@<dose>-<view>
chose where present; prints each round, the best of each, and whether the two objects differ.
"""
from __future__ import annotations

import fly64study  # noqa: F401  (pins the numerics: before numpy and torch load)

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

from fly64study import iterative
from fly64study.contract import load_dataset
from fly64study.design import load_params
from fly64study.numerics import exact_sqrt, host, pin_torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dose", default="1e3")
    parser.add_argument("--view", default="dense")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    params = load_params("params.yaml")
    path = Path("data/phase_d") / f"dose_{args.dose}" / args.view / "test.npz"
    if not path.is_file():
        sys.exit(f"{path}: missing; run `dvc repro` first")
    test = load_dataset(path)
    tuning = Path("data/phase_f/tune") / f"dose_{args.dose}" / args.view / "lsqml_tuning.json"
    choice = iterative.Choice.load(tuning, args.dose, args.view) if tuning.is_file() else iterative.Choice()
    pin_torch(True, threads=1)
    modes = {"exact_sqrt": exact_sqrt, "torch's sqrt": contextlib.nullcontext}
    times: dict[str, list[float]] = {name: [] for name in modes}
    objects = {}
    for r in range(args.rounds):
        for name, context in modes.items():
            iterative.exact_sqrt = context  # what lsqml enters around pty-chi
            t0 = time.perf_counter()
            result = iterative.lsqml(test, params.reconstruct, choice=choice)
            times[name].append(time.perf_counter() - t0)
            objects[name] = result.object
            print(f"round {r + 1}, {name}: {times[name][-1]:.2f} s ({result.status})", flush=True)
    iterative.exact_sqrt = exact_sqrt
    h = host()
    print(f"LSQML on {args.view}@{args.dose} ({test.n} patterns, {choice}); host {h['cpu']}, {h['cores']} cores")
    best = {k: min(v) for k, v in times.items()}
    for name, t in best.items():
        print(f"  {name:13s} best of {args.rounds}: {t:.2f} s")
    exact, mkl = modes
    paired = sorted(a / b for a, b in zip(times[exact], times[mkl]))  # each round's pair ran back to back
    print(f"  {exact} / {mkl}: best {best[exact] / best[mkl]:.3f}, median of the rounds' ratios "
          f"{paired[len(paired) // 2]:.3f} (range {paired[0]:.3f}-{paired[-1]:.3f})")
    print(f"  objects differ: {not np.array_equal(objects[exact], objects[mkl])}")


if __name__ == "__main__":
    main()
