"""PtychoPINN+LSQML: LSQML started from a trained network's reconstruction instead of a flat object.

The network's stitched test field (phase G's PtychoPINN row, :func:`fly64study.inference.pinn_field`)
becomes LSQML's initial object; LSQML then runs tune@<dose>'s noise model, total variation and step
size for ``hybrid.epochs`` (fewer than a flat start needs) on the same test split's counts, the probe
known and the positions fixed. One run per training seed, each in its own folder. Like PtyChi it fits
the measured counts and never reads the truth: the test split's objectGuess gives only the grid.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from fly64study.bundle import BundleError
from fly64study.contract import ContractError, Dataset
from fly64study.design import Params
from fly64study.inference import TrainedBundle, pinn_field
from fly64study.iterative import Choice, run_reconstruction

MANIFEST = "hybrid_manifest.json"  # in each hybrid@<dose>-<view> output folder


def seed_dir(seed: int) -> str:
    return f"seed_{seed}"


def run_hybrid(test: Dataset, bundles: list[TrainedBundle], params: Params, choice: Choice, *, out_dir: str | Path,
               dose: str, view: str, test_path: str, timing_dir: str | Path, device: str = "cpu",
               deterministic: bool = True) -> list[dict]:
    """LSQML from each bundle's stitched field of ``test``; ``<out_dir>/seed_<s>/ptychi_reconstruction.npz``
    and ``ptychi.log`` per bundle, run records (inference and LSQML seconds) in ``<timing_dir>/seed_<s>.json``.
    Returns the manifest entries: phase F's fields plus the seed and the source bundle's SHA256."""
    choice = dataclasses.replace(choice, epochs=params.hybrid.epochs)
    entries = []
    for b in bundles:
        try:
            pinn = pinn_field(b.path, test, neighbor_count=params.design.neighbor_count,
                              grouping_seed=params.design.seeds.grouping, expected_sha256=b.sha256, device=device)
        except BundleError as err:
            raise ContractError(str(err)) from None
        entry = run_reconstruction(test, params.reconstruct, out_dir=Path(out_dir) / seed_dir(b.seed), dose=dose,
                                   view=view, test_path=test_path, device=device, deterministic=deterministic,
                                   timing_path=Path(timing_dir) / f"{seed_dir(b.seed)}.json", choice=choice,
                                   start=pinn.field, start_note=f"PtychoPINN seed {b.seed} (bundle {b.sha256[:12]})",
                                   timing_extra={"seed": b.seed, "pinn_seconds": pinn.seconds})
        entries.append({**entry, "seed": b.seed, "bundle_sha256": b.sha256})
    return entries
