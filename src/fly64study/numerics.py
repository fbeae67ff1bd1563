"""Pinned numerics: the same inputs give the same bits on any x86-64 CPU with AVX2.

Every library that computes floats picks its kernels at run time from the CPU it finds: ATen
(torch's own ops) and oneDNN by instruction set, MKL (torch's BLAS and FFT) by instruction set
and cache sizes, OpenBLAS and numpy's SIMD loops by instruction set, and all of them split
reductions by thread count. Each choice changes the order of floating-point sums, so a bundle
trained on an AVX-512 Intel machine differed from one trained on an AVX2 AMD machine.

:func:`pin` fixes each choice at the AVX2 level that every supported CPU has, and the thread
count at :data:`THREADS`. The dispatchers read these variables when their library loads, so the
package calls :func:`pin` from ``fly64study/__init__.py``, before numpy or torch is imported;
:func:`record` says in each manifest what was in force. ``FLY64STUDY_NUMERICS=native`` turns the
pinning off (benchmarks measure its cost that way); a GPU run is not covered by the pinning.

Convolutions run on oneDNN (torch's default on CPU): the default profile's training epochs took
half the time they took on torch's own (NNPACK forward, im2col + GEMM backward; bench/LOG.md,
"Default profile, fresh clone, training on oneDNN"). Their bits follow the ISA
and the thread count (measured: 1 vs 2 threads, SSE4.1 vs AVX2 gave other weights), both pinned
here, and the shapes. For f32 training torch asks oneDNN for ``forward_training`` with layout
``any``, which its brgemm kernels (whose blocking is chosen from the cache sizes) refuse, so the
``jit:avx2`` and ``jit_1x1:avx2`` kernels run. Their register blocking follows the shapes; they
read the cache sizes only to cap tiny problems at 4 threads and to choose how backward-data
splits rows between threads, neither of which changes the order of any sum.
tests/test_reproducible.py checks which kernels run, so a torch upgrade that changes the
dispatch fails there; bench/cross_cpu.py compares the bits with emulated Intel and AMD CPUs.
"""
from __future__ import annotations

import os
import sys

THREADS = 2  # torch / OpenMP / BLAS threads under pinning: part of the result, like a seed
ISA = "AVX2"

# Variable -> value. Set before the libraries load; an existing different value is overridden,
# since a host's own setting (say OMP_NUM_THREADS=16) would change the bits.
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's vectorised kernels: the AVX2 build, also on AVX-512 CPUs
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (convolutions): no AVX-512 / AMX kernels
    "DNNL_MAX_CPU_ISA": "AVX2",  # the same, for older oneDNN builds
    # MKL's conditional numerical reproducibility, the branch with the same bits on Intel and AMD
    # CPUs (SSE2 code: slower on Intel); with AVX2,STRICT an emulated Intel CPU computed other FFT
    # and exp/log bits than an AMD one (bench/LOG.md, "Bits on other CPUs")
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",  # MKL uses the threads it is given, never fewer (a condition of CNR)
    "OMP_DYNAMIC": "FALSE",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",  # numpy's / scipy's OpenBLAS: the AVX2 kernels on every CPU
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # numpy's SIMD loops: AVX2 level at most
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
    "OPENBLAS_NUM_THREADS": str(THREADS),
}
_SWITCH = "FLY64STUDY_NUMERICS"
_loaded_before: list[str] = []  # libraries that were imported before pin() ran (their settings may not hold)
_host: dict[str, str] = {}  # the host's own values of the pinned variables, before pin()


def pinned() -> bool:
    """Whether pinning is on (the default; ``FLY64STUDY_NUMERICS=native`` turns it off)."""
    return os.environ.get(_SWITCH, "pinned") != "native"


def pin() -> None:
    """Set :data:`PINNED_ENV` in this process (inherited by its children), unless turned off."""
    if not pinned():
        return
    _loaded_before[:] = [m for m in ("numpy", "torch", "scipy") if m in sys.modules]
    if not _host:
        _host.update({k: os.environ[k] for k in PINNED_ENV if k in os.environ and os.environ[k] != PINNED_ENV[k]})
    os.environ.update(PINNED_ENV)


def host_settings() -> dict[str, str]:
    """The host's own values of the pinned variables, as they were before :func:`pin` (tests
    start child processes with them, so each child has to pin for itself)."""
    return dict(_host)


def pin_torch(deterministic: bool, threads: int = THREADS) -> None:
    """torch's run-time settings: deterministic algorithms, and under pinning ``threads`` threads
    (part of the result: oneDNN splits its sums by them). Every stage command line gets
    ``pin_torch(True)`` (:func:`fly64study.cli.run`); train and reconstruct set it again from
    their ``--deterministic`` flag."""
    import torch

    strict = deterministic and pinned()
    # What torch.use_deterministic_algorithms does, minus importing torch._inductor (about 2.5 s
    # in every stage process) to set inductor's own flag: nothing here compiles. Whoever adds
    # torch.compile calls torch.use_deterministic_algorithms after importing it.
    torch._C._set_deterministic_algorithms(deterministic, warn_only=False)
    if (inductor := sys.modules.get("torch._inductor.config")) is not None:
        inductor.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if strict:
        torch.set_num_threads(threads)


def exact_sqrt():
    """A context in which float32 square roots on the CPU (``torch.sqrt``, ``Tensor.sqrt``, their
    in-place forms, and powers of 0.5) are correctly rounded, so the same on every CPU. torch takes
    them with MKL's vector square root, whose bits follow the CPU (an LSQML run on a Xeon and under
    an emulated EPYC first differ at a float32 ``torch.sqrt``; bench/LOG.md, "LSQML on Intel and
    AMD"), and code that is not ours (pty-chi) calls it. Here numpy takes them (the processor's IEEE
    square root), or, where autograd needs the graph, torch in float64 rounded to float32 (a faithful
    float64 root rounds to the correct float32 one: 53 >= 2 * 24 + 2; that root's gradient is
    float64 MKL's, rounded, so not covered: LSQML runs without autograd). Outside pinning
    (``FLY64STUDY_NUMERICS=native``) it does nothing. The training takes its one root in float64 itself.
    Every torch call inside pays a Python mode's dispatch (bench/sqrt.py measures the whole cost)."""
    import contextlib

    import numpy as np
    import torch
    from torch.overrides import TorchFunctionMode

    if not pinned():
        return contextlib.nullcontext()
    roots = frozenset({torch.sqrt, torch.Tensor.sqrt, torch.sqrt_, torch.Tensor.sqrt_})
    powers = frozenset({torch.pow, torch.Tensor.pow, torch.Tensor.__pow__, torch.Tensor.pow_, torch.Tensor.__ipow__})
    targets = roots | powers
    in_place = frozenset({torch.sqrt_, torch.Tensor.sqrt_, torch.Tensor.pow_, torch.Tensor.__ipow__})

    def root(x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            return torch.sqrt(x.double()).float()  # the mode is off inside its handler: torch's own sqrt
        a = x.resolve_neg().numpy()
        with np.errstate(invalid="ignore"):  # a negative gives NaN, as torch's does, without a warning
            # out=: an array also for a 0-d input (np.sqrt would return a numpy scalar)
            return torch.from_numpy(np.sqrt(a, out=np.empty_like(a)))

    class ExactSqrt(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            # every torch call passes here: the cheap test first
            if func in targets and not kwargs and args:
                x = args[0]
                if (isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.device.type == "cpu"
                        and (len(args) == 1 and func in roots or len(args) == 2 and func in powers
                             and _is_half(args[1]))):
                    return x.copy_(root(x)) if func in in_place else root(x)
            return func(*args, **(kwargs or {}))

    return ExactSqrt()


def _is_half(exponent) -> bool:
    """A number 0.5, Python's or numpy's (a tensor exponent is left to torch)."""
    import numbers

    return isinstance(exponent, numbers.Real) and exponent == 0.5


def record() -> dict:
    """What was in force, for manifests: the same on every machine under pinning (no host names)."""
    out = {"pinned": pinned(), "isa": ISA if pinned() else "native"}
    if pinned():
        out["env"] = dict(PINNED_ENV)
        if _loaded_before:
            out["loaded_before_pinning"] = list(_loaded_before)
    if "torch" in sys.modules:
        import torch

        out["torch_threads"] = torch.get_num_threads() if pinned() else "native"
        out["torch_mkldnn"] = bool(torch.backends.mkldnn.enabled)
        out["torch_deterministic"] = bool(torch.are_deterministic_algorithms_enabled())
    return out


def host() -> dict:
    """The machine a run used: for untracked run records (timing.json), never for tracked outputs."""
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    out = {"cpu": model, "cores": os.cpu_count()}
    if "torch" in sys.modules:
        import torch

        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        out["torch_threads"] = torch.get_num_threads()
    return out
