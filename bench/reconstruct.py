"""BP-UNet inference (the study's network, data/phase_e) (with stitching) against pty-chi LSQML on the same test split.

    .venv/bin/python bench/reconstruct.py                          # dose 1e4, dense view
    .venv/bin/python bench/reconstruct.py --dose 1e3 --dose 1e5 --view sparse --accelerator cuda

Reads the pipeline's outputs (run `dvc repro` first): the view's test split, its BP-UNet
bundle (verified against the training manifest) and the params' LSQML settings. Prints, per
(dose, view), both wall times, their ratio and both methods' phase MS-SSIM against the truth
(aligned as in phase G). PINN time is the best of 3 (the bundle loaded once); LSQML runs once,
with the settings tune@<dose>-<view> chose (data/phase_f/tune/dose_<d>/<view>/lsqml_tuning.json) where present.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import fly64study  # noqa: F401  (pins the numerics: before numpy and torch load)
import torch

from fly64study.bundle import load_inference_model
from fly64study.contract import load_dataset
from fly64study.design import load_params
from fly64study.inference import stitch, trained_bundles
from fly64study.iterative import Choice, lsqml
from fly64study.tuning import score
from fly64study.train import reconstruct_patches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dose", action="append", help="dose label (repeatable; default 1e4)")
    parser.add_argument("--view", action="append", help="view with a PINN job (repeatable; default dense)")
    parser.add_argument("--accelerator", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    params = load_params(args.params)
    device = args.accelerator
    shift = params.design.metrics.max_shift_px
    print(f"# {platform.machine()}, {torch.get_num_threads()} torch threads, device {device}, "
          f"LSQML {params.reconstruct.epochs} epochs, batch {params.reconstruct.batch_size}")
    print("| dose | view | positions | PINN inference + stitching (s) | LSQML (s) | LSQML / PINN | "
          "PINN phase MS-SSIM | LSQML phase MS-SSIM |")
    print("|---|---|---|---|---|---|---|---|")
    for dose in args.dose or ["1e4"]:
        for view in args.view or ["dense"]:
            test_path = Path("data/phase_d") / f"dose_{dose}" / view / "test.npz"
            if not test_path.is_file():
                sys.exit(f"{test_path}: missing; run `dvc repro` first")
            test = load_dataset(test_path)
            first = trained_bundles(Path(f"data/phase_e/runs/{dose}-{view}/training_manifest.json"), Path("data/phase_e"),
                                    dose, view, params.train.jobs[view])[0]  # the first training seed's BP-UNet
            net = load_inference_model(first.path, first.sha256)
            window = abs(test.probeGuess) ** 2
            fields = []

            def infer():
                patches = reconstruct_patches(net, test, neighbor_count=params.design.neighbor_count,
                                              grouping_seed=params.design.seeds.grouping, device=device)
                fields.append(stitch(patches, test.xcoords, test.ycoords, test.objectGuess.shape, window))
                if device == "cuda":
                    torch.cuda.synchronize()

            pinn_s = best_of(infer, 3)
            tuning = Path("data/phase_f/tune") / f"dose_{dose}" / view / "lsqml_tuning.json"
            choice = Choice.load(tuning, dose, view) if tuning.is_file() else Choice()  # the tuned LSQML, as phase F runs it
            t0 = time.perf_counter()
            result = lsqml(test, params.reconstruct, device=device, deterministic=False, choice=choice)
            lsqml_s = time.perf_counter() - t0
            if result.status != "completed":
                sys.exit(f"pty-chi failed on {test_path}: {result.error}")
            print(f"| {dose} | {view} | {test.n} | {pinn_s:.2f} | {lsqml_s:.2f} | {lsqml_s / pinn_s:.1f}× | "
                  f"{score(fields[-1], test, shift):.3f} | {score(result.object, test, shift):.3f} |", flush=True)


if __name__ == "__main__":
    main()
