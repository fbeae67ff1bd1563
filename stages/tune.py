"""Phase F, tuning: pty-chi LSQML's noise model, total-variation weight, step size and epochs for one
dose and view.

Runs the grid of reconstruct.tune on the view's training split, for at most reconstruct.epochs,
scored every reconstruct.tune.score_every epochs, and keeps the point and epochs with the best
phase MS-SSIM against that split's own ground truth. The test split is not an input of this
stage. Writes lsqml_tuning.json (grid, scores by epoch, cost-curve flatness, the choice), which
reconstruct@<dose>-<view> and hybrid@<dose>-<view> read.
"""
import argparse
from pathlib import Path

from fly64study.cli import run
from fly64study.contract import load_dataset
from fly64study.design import ParamsError, load_params
from fly64study.files import write_json
from fly64study.numerics import pin_torch
from fly64study.tuning import tune


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dose", required=True, help="dose label, a key of design.doses")
    parser.add_argument("--view", required=True, help="view, a key of design.views (the pipeline tunes compare.views)")
    parser.add_argument("--phase-d", default="data/phase_d", help="phase D root: dose_<d>/<view>/train.npz")
    parser.add_argument("--out", required=True, help="output folder, data/phase_f/tune/dose_<d>/<view>")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.dose not in params.design.doses:
        raise ParamsError(f"--dose {args.dose}: unknown; choose from {list(params.design.doses)}")
    if args.view not in params.design.views:
        raise ParamsError(f"--view {args.view}: unknown; choose from {list(params.design.views)}")
    cfg = params.reconstruct
    pin_torch(True, threads=1)  # as reconstruct runs LSQML: one thread, bitwise reproducible
    train_path = Path(args.phase_d) / f"dose_{args.dose}" / args.view / "train.npz"
    result = tune(load_dataset(train_path), cfg, max_shift=params.design.metrics.max_shift_px)
    write_json(Path(args.out) / "lsqml_tuning.json",
               {"dose": args.dose, "view": args.view, "train_data": str(train_path), **result})
    name = f"tune ({args.view}, dose={args.dose})"
    for row in result["grid"]:
        ms = "—" if row["ms_ssim_phase"] is None else f"{row['ms_ssim_phase']:.4f}"
        print(f"{name} {row['noise_model']}, tv {row['tv_weight']:g}, step {row['step_size']:g}: "
              f"phase MS-SSIM {ms} at {row['epochs']} epochs (training split), "
              f"cost flat from epoch {row['flat_from_epoch']}")
    chosen = result["chosen"]
    print(f"{name} → LSQML {chosen['noise_model']}, tv {chosen['tv_weight']:g}, "
          f"step {chosen['step_size']:g}, {chosen['epochs']} epochs (of at most {cfg.epochs})", flush=True)


if __name__ == "__main__":
    run(main)
