"""Phase E throughput: PtychoPINN training patterns per second, gridsize 1 and 2, N = 64 and 128.

    .venv/bin/python bench/train.py                       # CPU
    .venv/bin/python bench/train.py --accelerator cuda --bf16 --compile

A "pattern" is one diffraction pattern through network, overlap constraint, forward model,
Poisson loss, backward pass and Adam step (a gridsize-2 group counts as 4). Width and depth
are the default profile's (16, 3); peak memory is the process's resident set on CPU, the
allocator's peak on CUDA.
"""
from __future__ import annotations

import argparse
import platform
import resource
import time

import torch

from fly64study.model import ModelConfig, PtychoPINN
from fly64study.physics import make_probe
from fly64study.train import batch_loss


def throughput(N: int, gridsize: int, device: torch.device, *, batch: int, steps: int, bf16: bool,
               compile_model: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    C = gridsize * gridsize
    probe = torch.from_numpy(make_probe(N, aperture=0.4, central_stop=0.3, defocus=6.0 * N / 64))
    model = PtychoPINN(ModelConfig(N=N, gridsize=gridsize, width=16, depth=3, intensity_scale=3.0), probe).to(device)
    if compile_model:
        model = torch.compile(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
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
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return steps * batch * C / (time.perf_counter() - t0), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training model")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default: 8 on CPU, 50 on CUDA)")
    args = parser.parse_args()
    device = torch.device(args.accelerator)
    steps = args.steps or (8 if device.type == "cpu" else 50)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# train: {name}, torch {torch.__version__}, bf16={args.bf16}, compile={args.compile}")
    print("| N | gridsize | batch (groups) | patterns/s | peak memory (MiB) |")
    print("|---|---|---|---|---|")
    for N in (64, 128):
        for gridsize in (1, 2):
            batch = (16 if gridsize == 1 else 4) * (1 if device.type == "cpu" else 16)
            rate, peak = throughput(N, gridsize, device, batch=batch, steps=steps, bf16=args.bf16,
                                    compile_model=args.compile)
            print(f"| {N} | {gridsize} | {batch} | {rate:,.0f} | {peak:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
