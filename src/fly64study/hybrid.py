"""<network>+LSQML: LSQML started from a trained network's reconstruction instead of a flat object.

The network's stitched test field (phase G's PtychoPINN or BP-UNet row, :func:`fly64study.inference.pinn_field`)
becomes LSQML's initial object; LSQML then runs tune@<dose>-<view>'s noise model, total variation and step
size for ``hybrid.epochs`` (or tune@'s own epochs, where it chose fewer: never longer than LSQML's
run) on the same test split's counts, the probe known and the positions fixed. One run per network of
``hybrid.networks`` and training seed, each in its own folder. Like LSQML it fits the measured counts and never reads the truth: the
test split's objectGuess gives only the grid.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from fly64study.bundle import BundleError
from fly64study.contract import ContractError, Dataset
from fly64study.design import Params
from fly64study.files import sha256_file
from fly64study.inference import PinnField, TrainedBundle, pinn_field
from fly64study.iterative import RESULT_FILE, Choice, LSQMLResult, load_result, run_epochs, run_reconstruction

MANIFEST = "hybrid_manifest.json"  # in each hybrid@<dose>-<view> output folder, every network's runs
START = "the PINN's stitched test field"  # the settings' object_init (the network, seed and bundle: the manifest)


def run_dir(network: str, seed: int) -> Path:
    """A run's folder in hybrid@'s output: ``<network>/seed_<s>``."""
    return Path(network) / f"seed_{seed}"


def field_digest(field: np.ndarray) -> str:
    """SHA256 of a field's bytes: compare@ checks that a run started from the very field it scores."""
    return hashlib.sha256(np.ascontiguousarray(field).tobytes()).hexdigest()


def start_fields(test: Dataset, bundles: list[TrainedBundle], params: Params,
                 device: str = "cpu") -> list[tuple[TrainedBundle, PinnField]]:
    """Each bundle's stitched field of ``test``, as compare@ makes its network's row (run them under
    the same pinning, before LSQML's one thread, and they are the same bytes)."""
    d = params.design
    try:
        return [(b, pinn_field(b.path, test, neighbor_count=d.neighbor_count, grouping_seed=d.seeds.grouping,
                               expected_sha256=b.sha256, device=device, stitching=params.compare.stitching,
                               synchronise=params.compare.synchronise_phases))
                for b in bundles]
    except BundleError as err:
        raise ContractError(str(err)) from None


def epochs(params: Params, choice: Choice) -> int:
    """hybrid.epochs, or tune@'s chosen epochs where they are fewer: the warm start never runs longer."""
    return min(params.hybrid.epochs, run_epochs(params.reconstruct, choice))


def run_hybrid(test: Dataset, starts: list[tuple[TrainedBundle, PinnField]], params: Params, choice: Choice, *,
               network: str, out_dir: str | Path, dose: str, view: str, test_path: str, device: str = "cpu",
               deterministic: bool = True) -> tuple[list[dict], list[dict]]:
    """LSQML from each start (bundles of ``network``); ``<out_dir>/<network>/seed_<s>/ptychi_reconstruction.npz``
    and ``ptychi.log``. Returns the manifest entries (phase F's fields plus the network, the seed, the
    source bundle's SHA256 and the start field's) and the run records (inference and LSQML seconds,
    keyed by the file's SHA256)."""
    choice = dataclasses.replace(choice, epochs=epochs(params, choice))
    entries, timing = [], []
    for b, pinn in starts:
        entry, seconds = run_reconstruction(test, params.reconstruct, out_dir=Path(out_dir) / run_dir(network, b.seed),
                                            dose=dose, view=view, test_path=test_path, device=device,
                                            deterministic=deterministic, choice=choice, start=pinn.field,
                                            start_note=START)
        entries.append({**entry, "network": network, "seed": b.seed, "bundle_sha256": b.sha256,
                        "start_sha256": field_digest(pinn.field)})
        timing.append({"network": network, "seed": b.seed, "sha256": entry["sha256"], "pinn_seconds": pinn.seconds,
                       "lsqml_seconds": seconds})
    return entries, timing


def load_runs(folder: str | Path, network: str, bundles: list[TrainedBundle],
              fields: dict[int, np.ndarray]) -> list[tuple[dict, LSQMLResult]]:
    """hybrid@'s runs of ``network`` in ``folder``, one per bundle of the trained model they started
    from: the manifest must name exactly those bundles (seed and SHA256), each run the very field
    that ``fields`` (seed -> the field compare@ scores) holds, and each file the SHA256 it records."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    fix = f"run `dvc repro` (hybrid@<dose>-<view>: {folder})"
    keys = ("network", "seed", "bundle_sha256", "sha256", "start_sha256")
    try:
        entries = json.loads(manifest.read_text())["jobs"]
        if not all(isinstance(e, dict) and all(k in e for k in keys) for e in entries):
            raise KeyError(f"an entry without all of {', '.join(keys)}")
        entries = [e for e in entries if e["network"] == network]
        started = {(e["seed"], e["bundle_sha256"]) for e in entries}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ContractError(f"{manifest}: cannot read the hybrid manifest ({err}); {fix}") from None
    if started != {(b.seed, b.sha256) for b in bundles} or len(entries) != len(bundles):
        raise ContractError(f"{manifest}: its {network} runs started from other bundles than the view's "
                            f"(seeds {sorted(s for s, _ in started)}); {fix}")
    runs = []
    for e in entries:
        if e["start_sha256"] != field_digest(fields[e["seed"]]):
            raise ContractError(f"{manifest}: {network} seed {e['seed']} started from another field than the one "
                                f"scored here (inferred with other numerics?); {fix}")
        path = folder / run_dir(network, e["seed"]) / RESULT_FILE
        try:
            matches = sha256_file(path) == e["sha256"]
        except OSError as err:
            raise ContractError(f"{path}: cannot read it ({err.strerror}); {fix}") from None
        if not matches:
            raise ContractError(f"{path}: its SHA256 is not the one {manifest} records; {fix}")
        runs.append((e, load_result(path)))
    return runs
