"""Phase E throughput: training patterns per second of the study's networks side by side, gridsize 1
and 2, N = 64 (and 128): the published PtychoPINN at the profile's n_filters_scale and at the published
s = 2, and BP-UNet at the profile's settings.

    .venv/bin/python bench/train.py                       # CPU, pinned numerics, N = 64
    .venv/bin/python -m fly64study.profiles full --out /tmp/full.yaml
    .venv/bin/python bench/train.py --n 64 --n 128 --params /tmp/full.yaml
    .venv/bin/python bench/train.py --accelerator cuda --bf16 --compile

A "pattern" is one diffraction pattern through network, overlap constraint, forward model,
Poisson loss, backward pass and Adam step (a gridsize-2 group counts as 4). The networks alternate
over ``--rounds`` rounds in one process and the best round of each is kept (the least disturbed on
a shared machine). Peak memory is the process's resident set on CPU (over the process so far), the
allocator's peak over the row's networks on CUDA.
"""
from __future__ import annotations

import argparse
import platform
import resource
import time

import fly64study  # noqa: F401  (pins the numerics: before numpy and torch load)
import torch

from fly64study.design import load_params
from fly64study.networks import Autoencoder, network_config
from fly64study.numerics import pin_torch
from fly64study.physics import make_probe
from fly64study.train import batch_loss, make_optimiser

def make_step(N: int, gridsize: int, net: tuple[str, dict], device: torch.device, *, batch: int, bf16: bool,
              compile_model: bool):
    torch.manual_seed(0)
    C = gridsize * gridsize
    probe = torch.from_numpy(make_probe(N, aperture=0.4, central_stop=0.3, defocus=6.0 * N / 64))
    model = Autoencoder(network_config(N, gridsize, 3.0, *net), probe).to(device)
    if compile_model:
        model = torch.compile(model)
    opt = make_optimiser(model, 1e-3)
    amp = torch.rand(batch, C, N, N, device=device)
    counts = torch.poisson(9.0 * amp**2)
    offsets = (torch.rand(batch, C, 2, device=device) - 0.5) * 8
    generator = torch.Generator(device=device).manual_seed(1)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = batch_loss(model, amp, counts, offsets, 0.5, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up (and compilation)
        step()
    return step


def timed(step, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="the networks' settings: train.ptychopinn, train.bp_unet")
    parser.add_argument("--accelerator", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training model")
    parser.add_argument("--n", type=int, action="append", help="patch size N (repeatable; default 64)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per round (default: 4 on CPU, 50 on CUDA)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the networks; the best round counts")
    args = parser.parse_args()
    device = torch.device(args.accelerator)
    pin_torch(True)  # what every training stage runs under (--deterministic)
    t = load_params(args.params).train
    s = t.ptychopinn.n_filters_scale
    nets = {f"PtychoPINN s={s:g}": ("ptychopinn", {"n_filters_scale": s}),
            "PtychoPINN s=2 (published)": ("ptychopinn", {"n_filters_scale": 2}),
            "BP-UNet": ("bp_unet", {k: getattr(t.bp_unet, k) for k in ("width", "depth", "stride", "skips")})}
    if s == 2:
        del nets["PtychoPINN s=2 (published)"]
    steps = args.steps or (4 if device.type == "cpu" else 50)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# train: {name}, torch {torch.__version__}, bf16={args.bf16}, compile={args.compile}; {args.params}: {nets}")
    print("| N | gridsize | batch (groups) | " + " | ".join(f"{k} patterns/s" for k in nets) + " | peak memory (MiB) |")
    print("|---|---|---|" + "---|" * len(nets) + "---|")
    for N in args.n or [64]:
        for gridsize in (1, 2):
            batch = (16 if gridsize == 1 else 8) * (1 if device.type == "cpu" else 16)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()  # this row's peak, of every network
            runs = {k: make_step(N, gridsize, net, device, batch=batch, bf16=args.bf16, compile_model=args.compile)
                    for k, net in nets.items()}
            best = {k: float("inf") for k in runs}
            for _ in range(args.rounds):
                for k, step in runs.items():
                    best[k] = min(best[k], timed(step, steps, device))
            rate = {k: steps * batch * gridsize**2 / best[k] for k in runs}
            print(f"| {N} | {gridsize} | {batch} | " + " | ".join(f"{rate[k]:,.1f}" for k in runs) +
                  f" | {peak_mib(device):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
