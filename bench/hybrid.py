"""LSQML from a flat object against LSQML from the PINN's stitched field, scored along the way.

Reads the pipeline's phase D splits, phase E bundles (the first seed) and tune@<dose>-<view>'s choice (run
`dvc repro` first). For each dose and split, runs LSQML with the chosen settings for
reconstruct.epochs from both starts and prints the phase MS-SSIM against that split's truth every
--every epochs, with the wall times. The training split is where hybrid.epochs may be chosen (the
network trained on it, so its field there is a little better than on the test split); the test split
is shown for the record, never to choose.

    python bench/hybrid.py [--dose 1e3 --dose 1e4] [--split train --split test] [--every 5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import fly64study  # noqa: F401  (pins the numerics: before numpy and torch load)
from fly64study.contract import load_dataset
from fly64study.design import load_params
from fly64study.inference import pinn_field, trained_bundles
from fly64study.iterative import Choice, lsqml
from fly64study.numerics import host, pin_torch
from fly64study.tuning import score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dose", action="append", help="dose labels (default: every dose)")
    parser.add_argument("--split", action="append", choices=("train", "test"), help="default: train")
    parser.add_argument("--view", default="dense")
    parser.add_argument("--every", type=int, default=5, help="epochs between scorings")
    args = parser.parse_args()
    params = load_params("params.yaml")
    d, cfg = params.design, params.reconstruct
    h = host()
    print(f"host {h['cpu']}, {h['cores']} cores; LSQML on one thread, {cfg.epochs} epochs, view {args.view}")
    print("| dose | split | start | PINN alone | phase MS-SSIM by epoch | LSQML (s) |")
    print("|---|---|---|---|---|---|")
    for dose in args.dose or list(d.doses):
        tuning = Path("data/phase_f/tune") / f"dose_{dose}" / args.view / "lsqml_tuning.json"
        if not tuning.is_file():
            sys.exit(f"{tuning}: missing; run `dvc repro` first")
        choice = Choice.load(tuning, dose, args.view)
        choice = Choice(choice.noise_model, choice.tv_weight, choice.step_size)  # the cap, not the chosen epochs
        bundle = trained_bundles(Path(f"data/phase_e/runs/{dose}-{args.view}/training_manifest.json"),
                                 Path("data/phase_e"), dose, args.view, params.train.jobs[args.view])[0]
        for split in args.split or ["train"]:
            ds = load_dataset(Path("data/phase_d") / f"dose_{dose}" / args.view / f"{split}.npz")
            pin_torch(True)  # the field as hybrid@ and compare@ infer it
            pinn = pinn_field(bundle.path, ds, neighbor_count=d.neighbor_count, grouping_seed=d.seeds.grouping,
                              expected_sha256=bundle.sha256, stitching=params.compare.stitching,
                              synchronise=params.compare.synchronise_phases)
            alone = score(pinn.field, ds, d.metrics.max_shift_px)
            pin_torch(True, threads=1)  # LSQML as hybrid@ and reconstruct@ run it
            for name, start in (("flat", None), ("PINN", pinn.field)):
                result = lsqml(ds, cfg, choice=choice, snapshot_every=args.every, start=start)
                curve = ", ".join(f"{e}: {score(f, ds, d.metrics.max_shift_px):.4f}" for e, f in result.snapshots)
                print(f"| {dose} | {split} | {name} | {alone:.4f} | {curve} | {result.wall_seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
