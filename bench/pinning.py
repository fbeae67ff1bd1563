"""What the pinned numerics cost: each stage kind's compute, pinned against native, in one run.

    .venv/bin/python bench/pinning.py                 # default profile, dose 1e3, dense view

Pinned (the default, :mod:`fly64study.numerics`): AVX2 kernels everywhere (oneDNN's too), 2
threads. Native (``FLY64STUDY_NUMERICS=native``): whatever each library picks for this CPU. The
dispatchers read their settings when they load, so each mode runs in its own worker process; the workers alternate (pinned, native,
pinned, native) and each figure is the faster of the two rounds. Times are the stage's compute
inside one process (imports excluded): phase C simulation of one dose, phase D view building,
phase E training steps at the profile's size, phase F LSQML epochs, phase G one comparison's
alignment and metrics.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROUNDS = 2


def worker(params_path: str, dose: str, view: str, train_steps: int, lsqml_epochs: int) -> dict:
    from fly64study import metrics, numerics  # first: the pinning must precede numpy and torch

    import dataclasses

    import numpy as np
    import torch

    from fly64study.design import load_params
    from fly64study.iterative import lsqml
    from fly64study.networks import Autoencoder, network_config
    from fly64study.overlap import build_view
    from fly64study.simulate import generate_dose
    from fly64study.grouped import make_groups
    from fly64study.train import batch_loss, make_optimiser

    numerics.pin_torch(True)
    params = load_params(params_path)
    d = params.design
    out = {}
    t0 = time.perf_counter()
    train, test = generate_dose(d, params.generate, dose)
    out["generate (phase C)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    view_train, _ = build_view(train, view=view, fraction=d.views[view], neighbor_count=d.neighbor_count,
                               subsampling_seed=d.seeds.subsampling, grouping_seed=d.seeds.grouping,
                               min_positions=params.overlap.min_positions)
    view_test, _ = build_view(test, view=view, fraction=d.views[view], neighbor_count=d.neighbor_count,
                              subsampling_seed=d.seeds.subsampling, grouping_seed=d.seeds.grouping,
                              min_positions=params.overlap.min_positions)
    out["overlap (phase D)"] = time.perf_counter() - t0

    cfg = params.train
    torch.manual_seed(0)
    model = Autoencoder(network_config(d.N, 2, float(view_train.metadata["intensity_scale"]), "ptychopinn",
                                       cfg.ptychopinn), torch.from_numpy(view_train.probeGuess))
    opt = make_optimiser(model, cfg.learning_rate)
    groups = make_groups(view_train.xcoords, view_train.ycoords, gridsize=2, neighbor_count=d.neighbor_count, seed=1)
    s = float(view_train.metadata["intensity_scale"])
    amp = torch.from_numpy(view_train.diffraction)
    counts = torch.from_numpy(np.round((view_train.diffraction.astype(np.float64) * s) ** 2).astype(np.float32))
    gen = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    for i in range(train_steps):
        idx = groups.indices[(i * cfg.batch_size) % len(groups.indices):][:cfg.batch_size]
        off = groups.offsets[(i * cfg.batch_size) % len(groups.indices):][:cfg.batch_size]
        loss = batch_loss(model, amp[idx], counts[idx], off, cfg.thinning, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    out[f"train (phase E), {train_steps} steps of {cfg.batch_size} gs2 groups"] = time.perf_counter() - t0

    torch.set_num_threads(1)  # as phase F runs it under --deterministic
    t0 = time.perf_counter()
    result = lsqml(view_test, dataclasses.replace(params.reconstruct, epochs=lsqml_epochs), deterministic=True)
    out[f"reconstruct (phase F), {lsqml_epochs} LSQML epochs"] = time.perf_counter() - t0
    torch.set_num_threads(numerics.THREADS)

    region = metrics.scanned_area(view_test.xcoords, view_test.ycoords, view_test.objectGuess.shape)
    t0 = time.perf_counter()
    for level in metrics.ALIGNMENTS:
        al = metrics.align(result.object, view_test.objectGuess, region, level=level, max_shift=d.metrics.max_shift_px)
        for pred, ref in ((al.amplitude, al.truth_amplitude), (al.phase, al.truth_phase)):
            metrics.component_metrics(pred, ref, smooth_sigma=d.metrics.ms_ssim_sigma)
    out["compare (phase G), one field, both levels"] = time.perf_counter() - t0
    out["_numerics"] = numerics.record()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="profiles/default.yaml")
    parser.add_argument("--dose", default="1e3")
    parser.add_argument("--view", default="dense")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--lsqml-epochs", type=int, default=10)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.params, args.dose, args.view, args.train_steps, args.lsqml_epochs)))
        return
    best: dict[str, dict[str, float]] = {"pinned": {}, "native": {}}
    for _ in range(ROUNDS):
        for mode in ("pinned", "native"):
            env = {**os.environ, "FLY64STUDY_NUMERICS": mode}
            for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY", "MKL_CBWR"):
                env.pop(key, None)  # native means the host's defaults
            proc = subprocess.run([sys.executable, __file__, "--worker", "--params", args.params, "--dose", args.dose,
                                   "--view", args.view, "--train-steps", str(args.train_steps),
                                   "--lsqml-epochs", str(args.lsqml_epochs)],
                                  env=env, capture_output=True, text=True, check=True)
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            got.pop("_numerics")
            for k, v in got.items():
                best[mode][k] = min(best[mode].get(k, float("inf")), v)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    print(f"# {cpu}, {os.cpu_count()} cores; {args.params}, dose {args.dose}, {args.view} view; "
          f"faster of {ROUNDS} alternating rounds")
    print("| stage kind | pinned (s) | native (s) | pinned / native |")
    print("|---|---|---|---|")
    for k in best["pinned"]:
        p, n = best["pinned"][k], best["native"][k]
        print(f"| {k} | {p:.2f} | {n:.2f} | {p / n:.2f}× |")


if __name__ == "__main__":
    main()
