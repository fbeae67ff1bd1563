"""Which kernels give the same bits on other CPUs: digests of single torch ops, of three PINN
training steps and of two short LSQML runs, on this CPU and under QEMU's user-mode emulation of
other x86-64 CPUs.

    apt-get install qemu-user                       # QEMU >= 7.2: its TCG runs AVX2 and FMA
    .venv/bin/python bench/cross_cpu.py             # this CPU, Haswell (Intel), EPYC-Rome (AMD Zen 2)
    .venv/bin/python bench/cross_cpu.py --cpu Skylake-Client --cpu EPYC-Milan

Each digest is the SHA256 (first 16 hex digits) of one result under the project's pinning
(fly64study.numerics: AVX2, 2 threads): convolutions on oneDNN, forward and both backward passes;
FFTs and unary maths (MKL's FFT and vector maths library where torch uses them); numpy for
reference. An emulated CPU reports its own vendor, family and cache sizes (CPUID) to every
library's dispatcher, so a kernel that picks its code by CPU shows here. Emulated arithmetic is
IEEE-exact except the approximate reciprocals (RCPPS/RSQRTPS), whose bits differ between real CPUs
too. Emulation is slow: about 5 minutes per CPU for the ops and steps, mostly importing torch, and
about as long again for the LSQML runs.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import fly64study  # noqa: F401  (pins the numerics before numpy and torch load)


def digest(*tensors) -> str:
    import torch

    m = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous()
        m.update((torch.view_as_real(t) if t.is_complex() else t).numpy().tobytes())
    return m.hexdigest()[:16]


def emit() -> None:
    """Print ``name digest`` lines for this process's CPU."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    import dataclasses

    from fly64study.design import load_params
    from fly64study.iterative import Choice, lsqml
    from fly64study.networks import Autoencoder, network_config
    from fly64study.simulate import generate_dose
    from fly64study.numerics import pin_torch
    from fly64study.physics import make_probe
    from fly64study.train import batch_loss, make_optimiser

    pin_torch(True)
    g = torch.Generator().manual_seed(0)
    out = {}
    for B, ci, co, hw, k in [(8, 20, 16, 32, 3), (8, 48, 16, 32, 3), (8, 64, 128, 4, 3), (8, 1, 1, 40, 3),
                             (8, 16, 12, 32, 1)]:
        x = torch.randn(B, ci, hw, hw, generator=g, requires_grad=True)
        w = torch.randn(co, ci, k, k, generator=g, requires_grad=True)
        b = torch.randn(co, generator=g, requires_grad=True)
        y = F.conv2d(x, w, b, padding=k // 2)
        y.backward(torch.randn(y.shape, generator=g))
        out[f"conv {ci}->{co} {hw}² k{k}"] = digest(y, x.grad, w.grad, b.grad)
    x = torch.randn(4, 4, 64, 64, generator=g)
    z = torch.complex(x, torch.randn(x.shape, generator=g))
    a = torch.rand(4, 4, 64, 64, generator=g) + 0.1
    ops = {"fft2 (MKL)": lambda: torch.fft.fft2(z), "ifft2 (MKL)": lambda: torch.fft.ifft2(z, norm="ortho"),
           "exp": lambda: torch.exp(x), "log": lambda: torch.log(a), "sqrt": lambda: torch.sqrt(a),
           "sqrt in float64": lambda: torch.sqrt(a.double()).float(),
           "sigmoid": lambda: torch.sigmoid(x), "tanh": lambda: torch.tanh(x), "silu": lambda: F.silu(x),
           "abs (complex)": lambda: z.abs(), "angle": lambda: torch.angle(z), "polar": lambda: torch.polar(a, x),
           "sum": lambda: x.sum(dim=(-2, -1)), "matmul (MKL)": lambda: x.reshape(-1, 64) @ x.reshape(-1, 64)[:64].T,
           "interpolate": lambda: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False),
           "binomial": lambda: torch.binomial(torch.full((4096,), 50.0), torch.full((4096,), 0.5),
                                              generator=torch.Generator().manual_seed(3))}
    out.update({name: digest(f()) for name, f in ops.items()})
    for name, v in {"numpy sqrt": np.sqrt(a.numpy()), "numpy exp": np.exp(x.numpy()),
                    "numpy fft2": np.fft.fft2(z.numpy())}.items():
        out[name] = hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]
    torch.manual_seed(0)
    probe = torch.from_numpy(make_probe(64, aperture=0.4, central_stop=0.3, defocus=6.0))
    amp = torch.rand(4, 4, 64, 64, generator=g)
    counts = torch.poisson(9.0 * amp**2, generator=g)
    offsets = (torch.rand(4, 4, 2, generator=g) - 0.5) * 8
    for name, net in (("BP-UNet", ("bp_unet", dict(width=16, depth=3, stride=2, skips="concat"))),
                      ("PtychoPINN", ("ptychopinn", {"n_filters_scale": 1}))):
        torch.manual_seed(0)
        model = Autoencoder(network_config(64, 2, 3.0, *net), probe)
        opt = make_optimiser(model, 1e-3)  # fly64study.train's optimiser (no clipping here)
        thin = torch.Generator().manual_seed(1)
        for step in range(3):
            loss = batch_loss(model, amp, counts, offsets, 0.5, thin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            out[f"{name} step {step + 1} (weights)"] = digest(*model.parameters())
    # pty-chi's LSQML as phase F runs it (exact_sqrt, one thread): 2 epochs on the tiny profile's 1e5
    # test split, per noise model; its float32 square roots once differed between a Xeon and an EPYC
    tiny = load_params(Path(__file__).resolve().parents[1] / "profiles" / "tiny.yaml")
    test = generate_dose(tiny.design, tiny.generate, "1e5")[1]
    pin_torch(True, threads=1)
    for choice in (Choice(), Choice(noise_model="poisson", tv_weight=0.1)):
        result = lsqml(test, dataclasses.replace(tiny.reconstruct, epochs=2), choice=choice)
        out[f"LSQML 2 epochs, {choice.noise_model}, TV {choice.tv_weight:g} (object)"] = (
            hashlib.sha256(result.object.tobytes()).hexdigest()[:16] if result.status == "completed" else result.error)
    for name, d in out.items():
        print(f"{name}\t{d}")


def run(cpu: str | None) -> dict[str, str]:
    python = Path(sys.executable).resolve()  # QEMU runs the interpreter, not the venv's link to it
    cmd = [str(python), __file__, "--emit"]
    if cpu:
        cmd = ["qemu-x86_64", "-cpu", cpu, *cmd]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{cpu or 'this CPU'}: {proc.stderr[-2000:]}")
    return dict(line.split("\t") for line in proc.stdout.splitlines() if line.count("\t") == 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emit", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", action="append", help="a QEMU CPU model (`qemu-x86_64 -cpu help`; repeatable)")
    args = parser.parse_args()
    if args.emit:
        emit()
        return
    cpus = args.cpu or ["Haswell-v4", "EPYC-Rome-v2"]
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    here = run(None)
    others = {cpu: run(cpu) for cpu in cpus}
    print(f"# this CPU: {model}; emulated: {', '.join(cpus)} (qemu-x86_64 user mode)")
    print("| result | this CPU | " + " | ".join(cpus) + " |")
    print("|---|---|" + "---|" * len(cpus))
    for name, d in here.items():
        print(f"| {name} | {d} | " + " | ".join("same" if o[name] == d else o[name] for o in others.values()) + " |")


if __name__ == "__main__":
    main()
