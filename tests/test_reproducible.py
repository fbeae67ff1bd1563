"""Byte for byte on any x86-64 CPU: golden digests of the tiny run, a rerun that leaves dvc.lock
unchanged, and the pinned numerics holding against a host's own settings.

The machines that run this suite differ in CPU from one run to the next, so the golden digests
(tests/golden/tiny_sha256.txt, made with `make golden`) are what keeps the promise: a digest
that changed on another machine is a finding about the pinning, not noise to re-bless.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, clone_run, copy_project, file_digests, host_env, profile_params, sh
from fly64study.files import sha256_file

pytestmark = pytest.mark.pipeline

GOLDEN = REPO / "tests" / "golden" / "tiny_sha256.txt"
PHASES = ("design.json", "phase_c", "phase_d", "phase_e", "ptychopinn", "phase_f", "refine", "hybrid", "phase_g", "report")
# a host's own settings that would change the bits if the pinning did not override them
FOREIGN_HOST = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default",
                "MKL_CBWR": "AUTO", "MKL_DYNAMIC": "TRUE", "OMP_DYNAMIC": "TRUE", "ONEDNN_MAX_CPU_ISA": "SSE41",
                "OPENBLAS_CORETYPE": "Prescott", "NPY_DISABLE_CPU_FEATURES": "X86_V3"}


def output_digests(root: Path) -> dict[str, str]:
    """SHA256 of every pipeline output, in pipeline order (phase, then path); no run records."""
    digests = file_digests(root / "data")
    order = sorted(digests, key=lambda r: (next(i for i, ph in enumerate(PHASES) if r.split("/")[0] == ph), r))
    return {f"data/{r}": digests[r] for r in order}


def read_golden() -> dict[str, str]:
    out = {}
    for line in GOLDEN.read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        out[path] = digest
    return out


def first_difference(expected: dict[str, str], got: dict[str, str]) -> str | None:
    """The first file, in pipeline order, that is missing, extra or different; with a count."""
    order = list(expected) + [p for p in got if p not in expected]
    bad = [p for p in order if expected.get(p) != got.get(p)]
    if not bad:
        return None
    p = bad[0]
    what = "missing" if p not in got else "not in the golden list" if p not in expected else \
        f"differs: {got[p]} here, {expected[p]} golden"
    return f"first difference in pipeline order: {p} {what} ({len(bad)} of {len(order)} files differ)"


def write_golden(root: Path) -> None:
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text("".join(f"{d}  {p}\n" for p, d in output_digests(root).items()))


def test_the_tiny_run_reproduces_the_golden_digests(tiny_pipeline, tmp_path):
    if os.environ.get("FLY64STUDY_WRITE_GOLDEN"):  # `make golden`: a deliberate, reviewed change
        # from one machine's plain `dvc repro`, so the shared run (a fan-out over three clones)
        # is held to what a single machine makes
        single = copy_project(tmp_path / "single")
        sh(single, "dvc", "repro")
        write_golden(single)
    problem = first_difference(read_golden(), output_digests(tiny_pipeline.root))
    assert problem is None, problem


def test_first_difference_names_the_earliest_file():
    golden = {"data/phase_c/a.npz": "1", "data/phase_e/b.zip": "2", "data/report/c.json": "3"}
    assert first_difference(golden, dict(golden)) is None
    got = {**golden, "data/phase_e/b.zip": "x", "data/report/c.json": "y"}
    assert first_difference(golden, got).startswith("first difference in pipeline order: data/phase_e/b.zip differs")
    assert "missing" in first_difference(golden, {"data/phase_c/a.npz": "1"})


# one stage of each kind: a forced rerun of all 24 would double the suite's longest part (tune@ is
# left out: its LSQML runs are reconstruct@'s, pinned the same way)
RERUN = ("design", "generate@1e3", "overlap@1e3-dense", "train@1e3-dense",
         "reconstruct@1e3-dense", "refine@1e3-dense", "hybrid@1e3-dense", "compare@1e3-dense", "report")


def test_a_forced_rerun_on_a_foreign_host_setting_leaves_every_output_and_the_lock_unchanged(tiny_pipeline, tmp_path):
    """`dvc repro -f -s` of one stage of every kind, with host settings that change the bits of
    an unpinned run (threads, ISA caps, MKL's code path): the pinning overrides them, so every
    output and dvc.lock come out byte-identical (no wall time or host name in a tracked file)."""
    root = clone_run(tiny_pipeline, tmp_path / "rerun")
    lock = (root / "dvc.lock").read_bytes()
    before = output_digests(root)
    shutil.rmtree(root / "data" / "timing")
    sh(root, "dvc", "repro", "-f", "-s", *RERUN, env=FOREIGN_HOST)  # one DVC process: each costs seconds
    assert (root / "dvc.lock").read_bytes() == lock, sh(root, "git", "diff", "--stat", "dvc.lock").stdout
    problem = first_difference(before, output_digests(root))
    assert problem is None, problem
    assert sh(root, "git", "status", "--porcelain").stdout == ""  # metrics and plot tables unchanged in git
    assert (root / "data/timing/phase_e/1e3-dense.json").is_file()  # the run records went elsewhere


def _train_digest(phase_d: Path, out: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages/train.py"), "--params", str(profile_params("tiny")), "--dose", "1e3",
         "--view", "dense", "--phase-d", str(phase_d), "--artifact-root", str(out), "--timing-dir", str(out / "t"),
         "--deterministic"], cwd=REPO, env={**host_env(), **env}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return sha256_file(out / "dose_1e3/dense/gs2/wts.h5.zip")


def test_unpinned_training_depends_on_the_cpu_capability(tiny_pipeline, tmp_path):
    """The negative control of the test above: without the pinning (FLY64STUDY_NUMERICS=native),
    torch's kernel level alone changes the bundle's bits, as a different CPU would."""
    phase_d = tiny_pipeline.root / "data/phase_d"
    native = {cap: _train_digest(phase_d, tmp_path / f"native-{cap}",
                                 {"FLY64STUDY_NUMERICS": "native", "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": "2"})
              for cap in ("default", "avx2")}
    assert native["default"] != native["avx2"]
    # (no comparison with the golden bundle: on an AVX2 host with 2 threads the native avx2 run
    # has the pinned settings.) Pinned, the same host settings change nothing: train@1e3-dense
    # ran under FOREIGN_HOST in the forced rerun above and reproduced this bundle


def test_pinning_torch_is_deterministic_without_loading_the_compiler():
    """pin_torch sets what torch.use_deterministic_algorithms sets for uncompiled code, without
    importing torch._inductor (about 2.5 s in each of a run's stage processes); oneDNN stays on."""
    code = ("import sys, torch; from fly64study.numerics import pin_torch; pin_torch(True); "
            "print(torch.are_deterministic_algorithms_enabled(), 'torch._inductor' in sys.modules, "
            "torch.backends.mkldnn.enabled, torch.get_num_threads())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=host_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False", "True", "2"]


# A PINN training step: every convolution it runs, forward and backward, as oneDNN logs it
_STEP = """
import fly64study, torch
from fly64study.numerics import pin_torch
from fly64study.networks import Autoencoder, network_config
from fly64study.train import batch_loss
pin_torch(True)
# the default profile's networks at its batch (8 groups), a small summed-skip one, gridsize 1
bp = lambda width, depth, stride, skips: ("bp_unet", dict(width=width, depth=depth, stride=stride, skips=skips))
for N, g, (network, settings), batch in ((64, 2, bp(16, 3, 2, "concat"), 8), (32, 2, bp(8, 2, 1, "add"), 2),
                                         (64, 1, bp(16, 3, 2, "concat"), 8), (64, 2, ("ptychopinn", {"n_filters_scale": 1}), 8),
                                         (64, 1, ("ptychopinn", {"n_filters_scale": 1}), 8)):
    cfg = network_config(N, g, 3.0, network, settings)
    model = Autoencoder(cfg, torch.ones(N, N, dtype=torch.complex64))
    amp = torch.rand(batch, g * g, N, N)
    offsets = torch.zeros(batch, g * g, 2)
    batch_loss(model, amp, torch.poisson(9 * amp ** 2), offsets, 0.5, torch.Generator()).backward()
    with torch.no_grad():  # validation and inference, also a last batch of one group
        model.net(amp, offsets)
        model.net(amp[:1], offsets[:1])
"""


def test_training_convolutions_run_on_the_pinned_onednn_kernels():
    """Under pinning, with a host that asks for SSE4.1 and one thread, every convolution of a
    training step (3×3 and 1×1, forward, backward data, backward weights) runs on oneDNN's AVX2
    JIT kernels on 2 threads: the kernels whose sums follow only the shapes, the ISA and the
    thread count (fly64study.numerics). A torch upgrade that sends them elsewhere (say to the
    brgemm kernels, whose blocking reads the cache sizes) fails here."""
    env = {**host_env(), "ONEDNN_VERBOSE": "1", "ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _STEP], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split(",") for line in proc.stdout.splitlines() if line.startswith("onednn_verbose")]
    info = {field for f in lines if f[2] == "info" for field in f[3:]}
    assert {"isa:Intel AVX2", "runtime:OpenMP", "nthr:2"} <= info, info
    convs = [f for f in lines if f[2] == "primitive" and f[3] == "exec" and f[5] == "convolution"]
    kinds = {(f[6], f[7]) for f in convs}
    assert {k for _, k in kinds} == {"forward_training", "backward_data", "backward_weights"}
    assert {impl for impl, _ in kinds} == {"jit:avx2", "jit_1x1:avx2"}, kinds


@pytest.mark.skipif(os.environ.get("FLY64STUDY_NUMERICS") == "native", reason="exact_sqrt is part of the pinning")
def test_exact_sqrt_gives_correctly_rounded_float32_roots_by_every_route():
    """torch's float32 square root (MKL's) is not always correctly rounded, and its bits follow the
    CPU; under exact_sqrt every route to it gives the correctly rounded root (float64 root, rounded),
    also for a 0-d tensor, a negated view and a strided one (pty-chi takes roots of all three)."""
    import numpy as np
    import torch

    from fly64study.numerics import exact_sqrt

    x = torch.rand(20000, generator=torch.Generator().manual_seed(0)) * 1000
    x[7] = -1.0
    with np.errstate(invalid="ignore"):
        want = np.sqrt(x.numpy().astype(np.float64)).astype(np.float32)
    z = torch.complex(x, -x)  # z.conj().imag is x, through a view with the negative bit
    with exact_sqrt():
        inplace, ipow = x.clone(), x.clone()
        inplace.sqrt_()
        ipow **= 0.5
        grad = x.clone().requires_grad_(True)
        through_autograd = torch.sqrt(grad)
        through_autograd.sum().backward()
        got = [torch.sqrt(x), x.sqrt(), x ** 0.5, torch.pow(x, 0.5), x ** np.float32(0.5), inplace, ipow,
               through_autograd.detach(), x.reshape(100, 200).t().sqrt().t().reshape(-1), z.conj().imag.sqrt()]
        scalar = torch.tensor(2.0).sqrt()
        square, double = x ** 2, torch.sqrt(x.double())
    for r in got:
        assert r.dtype == torch.float32 and np.array_equal(r.numpy(), want, equal_nan=True)
    assert scalar.shape == () and scalar.item() == np.float32(np.sqrt(2.0))
    ok = np.isfinite(want) & (want > 0)
    np.testing.assert_allclose(grad.grad.numpy()[ok], 0.5 / want[ok], rtol=1e-6)  # the gradient flows
    assert torch.equal(square, x * x)  # other powers: torch's own
    assert np.array_equal(double.numpy(), torch.sqrt(x.double()).numpy(), equal_nan=True)  # float64: torch's own
