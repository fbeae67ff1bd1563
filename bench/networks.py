"""What closes the likelihood gap: network variants trained on one view's TRAINING split, side by side.

    .venv/bin/python bench/networks.py --phase-d data/phase_d --dose 1e5 --view dense   # after `dvc repro`
    .venv/bin/python bench/networks.py --variant "PtychoPINN s=1" --variant "BP-UNet" --epochs 16

Each variant is trained as phase E trains a job (fly64study.train.train_model: the validation block,
early stopping, the params file's recipe unless the variant changes it, pinned numerics, seed 7) and
then scored on the same training split only, as the study allows for choosing settings: the share of
the flat-to-truth likelihood gap it closes (fly64study.likelihood; full counts and thinned), and the
phase MS-SSIM of its stitched field against the split's own truth (aligned as phase G aligns). The
test split is never read. Prints one Markdown row per variant, with its epochs and seconds per epoch
(this machine, this run: compare rows of one run only).
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import fly64study  # noqa: F401  (pins the numerics: before numpy and torch load)
import numpy as np
import torch

from fly64study import metrics
from fly64study.contract import load_dataset
from fly64study.design import load_params
from fly64study.inference import stitch, synchronise_phases
from fly64study.likelihood import likelihood_gap
from fly64study.numerics import pin_torch
from fly64study.train import every_group_patches, reconstruct_patches, train_model


def variants(params) -> dict[str, dict]:
    """name -> what it changes: ``network`` and its ``settings`` (over the params file's), ``recipe``
    (train.* fields), ``neighbor_count`` (K), ``stitching``."""
    t = params.train
    bp = {f.name: getattr(t.bp_unet, f.name) for f in dataclasses.fields(t.bp_unet)}
    return {
        "PtychoPINN s=1": {"network": "ptychopinn", "settings": {"n_filters_scale": 1}},
        "PtychoPINN s=2 (published)": {"network": "ptychopinn", "settings": {"n_filters_scale": 2}},
        "PtychoPINN s=1, published recipe (batch 16, LR halved after 2)":
            {"network": "ptychopinn", "settings": {"n_filters_scale": 1},
             "recipe": {"batch_size": 16, "lr_patience": 2}},
        "PtychoPINN s=1, 3x K-choose-C groups": {"network": "ptychopinn", "settings": {"n_filters_scale": 1},
                                                  "recipe": {"n_groups": -3}},
        "PtychoPINN s=1, K = 4": {"network": "ptychopinn", "settings": {"n_filters_scale": 1}, "neighbor_count": 4},
        "BP-UNet": {"network": "bp_unet", "settings": bp},
        "BP-UNet, full detector": {"network": "bp_unet", "settings": {**bp, "pupil": 0.0}},
        "BP-UNet, no phase prior": {"network": "bp_unet", "settings": {**bp, "phase_prior": False}},
        "BP-UNet, depth 4": {"network": "bp_unet", "settings": {**bp, "depth": 4}},
        "BP-UNet, 3x K-choose-C groups": {"network": "bp_unet", "settings": bp, "recipe": {"n_groups": -3}},
    }


def training_split_score(net, ds, *, neighbor_count: int, grouping_seed: int, stitching: str, max_shift: float,
                         synchronise: bool = False) -> float:
    """Phase MS-SSIM of the network's stitched field of ``ds`` against ``ds``'s own truth, aligned; with
    ``synchronise``, the patches' phases synchronised first (:func:`fly64study.inference.synchronise_phases`)."""
    if stitching == "every_group":
        patches, where = every_group_patches(net, ds, neighbor_count=neighbor_count, grouping_seed=grouping_seed)
        xs, ys = ds.xcoords[where], ds.ycoords[where]
    else:
        patches = reconstruct_patches(net, ds, neighbor_count=neighbor_count, grouping_seed=grouping_seed)
        xs, ys = ds.xcoords, ds.ycoords
    window = np.abs(ds.probeGuess) ** 2
    if synchronise:
        patches = synchronise_phases(patches, xs, ys, window)
    field = stitch(patches, xs, ys, ds.objectGuess.shape, window)
    region = metrics.scanned_area(ds.xcoords, ds.ycoords, ds.objectGuess.shape)
    al = metrics.align(field, ds.objectGuess, region, level="aligned", max_shift=max_shift)
    return float(metrics.ms_ssim(al.phase, al.truth_phase))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--phase-d", default="data/phase_d")
    parser.add_argument("--dose", default="1e5")
    parser.add_argument("--view", default="dense")
    parser.add_argument("--epochs", type=int, default=12, help="at most (early stopping as the params say)")
    parser.add_argument("--variant", action="append", help="only these (repeatable); default: all")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    params = load_params(args.params)
    d = params.design
    ds = load_dataset(Path(args.phase_d) / f"dose_{args.dose}" / args.view / "train.npz")
    gridsize = params.train.jobs[args.view]
    pin_torch(True)
    print(f"# {args.view} {args.dose} training split ({ds.n} positions), {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, at most {args.epochs} epochs, seed {args.seed}")
    print("| variant | parameters | epochs (best) | s / epoch | gap closed (full counts) | gap closed (thinned) | "
          "training-split phase MS-SSIM (one patch per position) | the same, phases synchronised | "
          "every group's patches, phases synchronised | best validation loss |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, v in variants(params).items():
        if args.variant and name not in args.variant:
            continue
        recipe = dict(v.get("recipe", {}))
        if recipe.get("n_groups", 0) < 0:  # a multiple of the training positions
            recipe["n_groups"] = -recipe["n_groups"] * ds.n
        network = v["network"]
        section = dataclasses.replace(params.train.network(network), **v["settings"])
        cfg = dataclasses.replace(params.train, epochs=args.epochs, **{network: section}, **recipe)
        K = v.get("neighbor_count", d.neighbor_count)
        t0 = time.perf_counter()
        result = train_model(ds, gridsize=gridsize, cfg=cfg, seed=args.seed, neighbor_count=K,
                             grouping_seed=d.seeds.grouping, device=torch.device("cpu"), network=network, label=name)
        seconds = (time.perf_counter() - t0) / len(result.history)
        net = result.model.net
        gap = likelihood_gap(net, ds, neighbor_count=K, grouping_seed=d.seeds.grouping, thinning=cfg.thinning,
                             seed=args.seed + 3)
        score, synced, every = (training_split_score(net, ds, neighbor_count=K, grouping_seed=d.seeds.grouping,
                                                     stitching=stitching, max_shift=d.metrics.max_shift_px,
                                                     synchronise=sync)
                                for stitching, sync in (("one_per_position", False), ("one_per_position", True),
                                                        ("every_group", True)))
        best = result.history[result.best_epoch - 1]["val_loss"]
        print(f"| {name} | {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M | {len(result.history)} "
              f"({result.best_epoch}) | {seconds:.1f} | {100 * gap['full_counts']['closed']:.1f} % | "
              f"{100 * gap['thinned']['closed']:.1f} % | {score:.4f} | {synced:.4f} | {every:.4f} | {best:.6g} |",
              flush=True)


if __name__ == "__main__":
    main()
