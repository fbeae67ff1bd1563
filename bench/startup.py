"""What a stage process pays before it computes: imports and torch's run-time settings.

    .venv/bin/python bench/startup.py [--rounds 5]

A `dvc repro` starts one process per stage (22 in the tiny profile, 38 in the default), so a
second of start-up is a minute of a tiny run. Each variant is a fresh interpreter; the variants
alternate round by round and each figure is the median of its rounds, with the machine.

- ``pin (use_deterministic_algorithms)``: torch imported, then the public call, which also imports
  torch._inductor to set its flag (what fly64study.numerics.pin_torch did before);
- ``pin (pin_torch)``: torch imported, then :func:`fly64study.numerics.pin_torch`, which sets the
  same ATen flag without importing the compiler;
- ``overlap stage imports``: what ``stages/overlap.py`` loads (numpy, scipy; no torch since
  :mod:`fly64study.physics` imports torch where it is used);
- ``reconstruct stage imports``: torch, pty-chi and torchvision (pty-chi imports it, and its ops
  import torch._dynamo): the fixed cost every phase F stage pays.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "pin (use_deterministic_algorithms)": "import torch; torch.use_deterministic_algorithms(True)",
    "pin (pin_torch)": "import fly64study.numerics as n, torch; n.pin_torch(True)",
    "overlap stage imports": "import fly64study.cli, fly64study.overlap, fly64study.contract",
    "reconstruct stage imports": "import fly64study.iterative, ptychi.api",
}


def cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, code in VARIANTS.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times[name].append(time.perf_counter() - t0)
    print(f"# stage start-up, {cpu()}, {args.rounds} alternating rounds, median seconds per process\n")
    print("| variant | median s | min s |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f} |")
    old, new = (statistics.median(times[k]) for k in ("pin (use_deterministic_algorithms)", "pin (pin_torch)"))
    print(f"\npin_torch saves {old - new:.2f} s per torch stage process ({old / new:.2f}× faster start-up)")


if __name__ == "__main__":
    main()
