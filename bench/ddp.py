"""Data-parallel training on this machine: `stages/train.py` in one process against
`torchrun --nproc_per_node=2`, alternating, on one phase D view of a profile.

    .venv/bin/python bench/ddp.py                                  # default profile, dense 1e3, 2 epochs
    .venv/bin/python -m fly64study.profiles full --out /tmp/full.yaml
    .venv/bin/python bench/ddp.py --params /tmp/full.yaml --epochs 1 --rounds 1

Patterns/s counts every training pattern of an epoch (a gridsize-2 group counts as C) over the
epoch's wall time as the stage logs it (validation included; rank 0's clock), summed over
``--epochs`` epochs; the best of ``--rounds`` alternations is kept. Both runs use the stage's
pinned numerics with --deterministic: every process runs the pinned 2 threads (oneDNN's sums
follow the thread count), so two processes on 2 cores share them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from fly64study.contract import save_dataset
from fly64study.design import load_params, read_params, write_params
from fly64study.numerics import THREADS
from fly64study.overlap import build_view
from fly64study.simulate import generate_dose

REPO = Path(__file__).resolve().parents[1]
GROUPS = re.compile(r"(\d+) training groups of (\d+)")


def write_view(params, dose: str, view: str, root: Path) -> None:
    design = params.design
    for part, split in zip(("train", "test"), generate_dose(design, params.generate, dose)):
        ds, _ = build_view(split, view=view, fraction=design.views[view], neighbor_count=design.neighbor_count,
                           subsampling_seed=design.seeds.subsampling, grouping_seed=design.seeds.grouping,
                           min_positions=params.overlap.min_positions)
        save_dataset(root / f"dose_{dose}" / view / f"{part}.npz", ds)


def run(processes: int, params_file: Path, phase_d: Path, out: Path, dose: str, view: str) -> float:
    stage = [str(REPO / "stages" / "train.py"), "--params", str(params_file), "--phase-d", str(phase_d),
             "--artifact-root", str(out), "--timing-dir", str(out / "timing"), "--dose", dose, "--view", view,
             "--deterministic"]
    cmd = [sys.executable, *stage] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *stage]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    if proc.returncode:
        raise SystemExit(proc.stdout + proc.stderr)
    groups, C = map(int, GROUPS.search(proc.stderr).groups())
    timing = json.loads((out / "timing" / "phase_e" / f"{dose}-{view}.json").read_text())
    seconds = timing["seeds"][0]["epoch_seconds"]
    return groups * C * len(seconds) / sum(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(REPO / "profiles" / "default.yaml"))
    parser.add_argument("--dose", default="1e3")
    parser.add_argument("--view", default="dense", help="a training job whose view is in design.views")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    params = load_params(args.params)
    raw = read_params(args.params)
    # a fixed number of epochs: no early stop, no learning-rate cut, one seed
    raw["train"].update(epochs=args.epochs, patience=args.epochs + 1, lr_patience=0, seeds=[raw["train"]["seeds"][0]])
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        tmp = Path(tmp)
        params_file = tmp / "params.yaml"
        write_params(raw, params_file)  # as DVC reads it: dose labels stay quoted text
        write_view(params, args.dose, args.view, tmp / "phase_d")
        best = {1: 0.0, 2: 0.0}
        for r in range(args.rounds):
            for k in best:
                rate = run(k, params_file, tmp / "phase_d", tmp / f"out-{r}-{k}", args.dose, args.view)
                best[k] = max(best[k], rate)
                print(f"# round {r + 1}: {k} process(es): {rate:,.1f} patterns/s", flush=True)
    cpu = platform.processor() or platform.machine()
    print(f"# {args.params}, dose {args.dose}, view {args.view}, {args.epochs} epochs, best of {args.rounds} "
          f"rounds; {os.cpu_count()} cores ({cpu})")
    print("| processes | threads each | patterns/s | vs 1 process |")
    print("|---|---|---|---|")
    for k, rate in best.items():
        print(f"| {k} | {THREADS} | {rate:,.1f} | {rate / best[1]:.2f}× |")


if __name__ == "__main__":
    main()
