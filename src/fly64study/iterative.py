"""Phase F: the iterative baseline, pty-chi's LSQML, on one view's test split.

The object starts flat (transmission 1, never the ground truth) or, for <network>+LSQML
(:mod:`fly64study.hybrid`), from a given field such as a PINN's stitched reconstruction; the probe is the
known one, every pattern is used and the positions are fixed. pty-chi sees the same photon data as the
PINN, in its own units: its far field is an unnormalised FFT, so the measured intensity
``(diffraction * s)^2 / s^2`` is scaled by N² to match the orthonormal FFT of the simulator.

The reconstructed object lives in the ground truth's pixel frame: the buffer is the object
plus a margin, with the position origin placed so that a position (x, y) is the patch centre
of :func:`fly64study.simulate.extract_patches` (``patch[a, b] = obj(y - N/2 + a, x - N/2 + b)``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fly64study.contract import ContractError, Dataset, read_npz, write_npz
from fly64study.design import NOISE_MODELS, Reconstruct
from fly64study.files import atomic_path, sha256_file
from fly64study.numerics import exact_sqrt, record

log = logging.getLogger(__name__)

RESULT_FILE = "ptychi_reconstruction.npz"  # one run's file (phase F's, and each hybrid@ seed's)
MARGIN = 8  # object buffer pixels beyond the ground truth's on each side: edge patches need no padding
ALGORITHM = "LSQML"


@dataclass(frozen=True)
class LSQMLResult:
    status: str  # "completed" or "failed"
    object: np.ndarray  # (H, W) complex64 in the ground truth's frame; (0, 0) when failed
    probe: np.ndarray  # (N, N) complex64; (0, 0) when failed
    cost: np.ndarray  # (epochs,) float64, pty-chi's loss per epoch
    wall_seconds: float | None  # this run's LSQML time (not stored in the file: a run record); None when loaded
    error: str = ""  # why pty-chi failed
    settings: dict = field(default_factory=dict)
    # (epoch, object) every ``snapshot_every`` epochs and at the last, when asked for (tune@ scores them)
    snapshots: tuple[tuple[int, np.ndarray], ...] = ()


def ptychi_version() -> str:
    from importlib.metadata import version

    return version("ptychi")


@dataclass(frozen=True)
class Choice:
    """What tune@<dose>-<view> chooses; the default is LSQML as configured before tuning existed."""

    noise_model: str = "gaussian"
    tv_weight: float = 0.0
    step_size: float = 1.0
    epochs: int | None = None  # None: reconstruct.epochs

    @classmethod
    def load(cls, path: str | Path, dose: str, view: str) -> "Choice":
        """The choice a ``lsqml_tuning.json`` of tune@``dose``-``view`` recorded, checked as the params are."""
        fix = f"run `dvc repro tune@{dose}-{view}`"
        try:
            record = json.loads(Path(path).read_text())
            chosen = record["chosen"]
            choice = cls(noise_model=chosen["noise_model"], tv_weight=float(chosen["tv_weight"]),
                         step_size=float(chosen["step_size"]), epochs=chosen["epochs"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ContractError(f"{path}: cannot read the LSQML tuning ({err}); {fix}") from None
        if record.get("dose") != dose:
            raise ContractError(f"{path}: the tuning of dose {record.get('dose')!r}, not {dose!r}; {fix}")
        if "view" not in record:
            raise ContractError(f"{path}: no view (a record from before each view was tuned on its own); {fix}")
        if record["view"] != view:  # a view's settings were chosen on its own training split
            raise ContractError(f"{path}: the tuning of view {record['view']!r}, not {view!r}; {fix}")
        if choice.noise_model not in NOISE_MODELS:
            raise ContractError(f"{path}: chosen.noise_model {choice.noise_model!r} is not one of {list(NOISE_MODELS)}; {fix}")
        if not (math.isfinite(choice.tv_weight) and choice.tv_weight >= 0):
            raise ContractError(f"{path}: chosen.tv_weight {choice.tv_weight} must be a number >= 0; {fix}")
        if not (math.isfinite(choice.step_size) and choice.step_size > 0):
            raise ContractError(f"{path}: chosen.step_size {choice.step_size} must be a number > 0; {fix}")
        if isinstance(choice.epochs, bool) or not isinstance(choice.epochs, int) or choice.epochs < 1:
            raise ContractError(f"{path}: chosen.epochs {choice.epochs!r} must be an integer >= 1; {fix}")
        return choice


def run_epochs(cfg: Reconstruct, choice: Choice) -> int:
    """The epochs ``choice`` runs: its own (tune@'s choice), at most ``reconstruct.epochs``."""
    if choice.epochs is None:
        return cfg.epochs
    if choice.epochs > cfg.epochs:
        raise ContractError(f"the LSQML choice runs {choice.epochs} epochs, more than reconstruct.epochs "
                            f"{cfg.epochs}: rerun tune@<dose>-<view> (`dvc repro`), which chooses at most that many")
    return choice.epochs


def _options(ds: Dataset, cfg: Reconstruct, device: str, deterministic: bool, choice: Choice, epochs: int,
             start: np.ndarray | None = None):
    import ptychi.api as api  # imported here: pty-chi takes seconds to import

    H, W = ds.objectGuess.shape
    N = ds.N
    o = api.LSQMLOptions()
    s = float(ds.metadata["intensity_scale"])
    counts = np.round((ds.diffraction.astype(np.float64) * s) ** 2)
    o.data_options.fft_shift = True  # the contract stores patterns with the zero frequency centred
    o.object_options.optimizable = True
    o.object_options.step_size = choice.step_size
    o.object_options.total_variation.enabled = choice.tv_weight > 0
    o.object_options.total_variation.weight = choice.tv_weight
    # pty-chi's patch centre sits half a pixel before the contract's (N/2): origin MARGIN - 0.5
    o.object_options.determine_position_origin_coords_by = api.ObjectPosOriginCoordsMethods.SPECIFIED
    o.object_options.position_origin_coords = np.array([MARGIN - 0.5, MARGIN - 0.5])
    o.probe_options.optimizable = cfg.refine_probe
    # its object/probe scale balancing would rescale a probe we hold fixed
    o.object_options.remove_object_probe_ambiguity.enabled = cfg.refine_probe
    o.probe_position_options.optimizable = False
    r = o.reconstructor_options
    r.num_epochs = epochs
    r.batch_size = min(cfg.batch_size, ds.n)
    r.noise_model = api.NoiseModels(choice.noise_model)
    r.rescale_probe_intensity_in_first_epoch = False  # the probe's scale is known: keep it
    r.random_seed = cfg.seed
    r.allow_nondeterministic_algorithms = not deterministic
    r.default_device = api.Devices.GPU if device == "cuda" else api.Devices.CPU
    obj = np.ones((1, H + 2 * MARGIN, W + 2 * MARGIN), np.complex64)  # the margin stays flat
    if start is not None:
        obj[0, MARGIN:-MARGIN, MARGIN:-MARGIN] = start
    data = {
        "diffraction_data": (counts / s**2 * N**2).astype(np.float32),
        "object_data": obj,
        "probe_data": ds.probeGuess[None, None].astype(np.complex64),
        "probe_position_y_px": ds.ycoords.astype(np.float64),
        "probe_position_x_px": ds.xcoords.astype(np.float64),
    }
    return o, data


def _drop_cpu_default_device() -> None:
    """Undo pty-chi's ``torch.set_default_device("cpu")``: a Python mode that every later torch call
    passes through (9 % of an LSQML run, and the scoring after it). The CPU is torch's own default,
    so dropping it changes no result (the phase F golden digests of tests/test_reproducible.py).
    A CUDA default is left as pty-chi set it."""
    if torch.get_default_device().type == "cpu":
        torch.set_default_device(None)


def lsqml(ds: Dataset, cfg: Reconstruct, *, device: str = "cpu", deterministic: bool = True,
          choice: Choice = Choice(), snapshot_every: int = 0, start: np.ndarray | None = None,
          start_note: str = "") -> LSQMLResult:
    """Run LSQML on ``ds`` with ``choice``'s noise model, total variation, step size and epochs,
    from a flat object or from ``start`` (on the object's grid, else a ContractError; ``start_note`` says what it is).
    ``snapshot_every`` > 0 keeps a copy of the object every that many epochs and at the last
    (``snapshots``; the run is the same, byte for byte). pty-chi's own failures (an exception, or a
    non-finite object) come back as a result with status ``failed`` and the reason, not as an exception."""
    epochs = run_epochs(cfg, choice)
    if start is not None and start.shape != ds.objectGuess.shape:
        raise ContractError(f"initial object: shape {start.shape}, expected the object's {ds.objectGuess.shape}")
    settings = {"algorithm": ALGORITHM, "epochs": epochs, "batch_size": min(cfg.batch_size, ds.n),
                "seed": cfg.seed, "refine_probe": cfg.refine_probe, "noise_model": choice.noise_model,
                "tv_weight": choice.tv_weight, "step_size": choice.step_size,
                "object_init": "flat (1 + 0j)" if start is None else (start_note or "given"),
                "probe_init": "known probe", "positions": "fixed",
                "device": device, "deterministic": deterministic, "threads": torch.get_num_threads(),
                "ptychi": ptychi_version()}
    empty = np.zeros((0, 0), np.complex64)
    from ptychi.api.task import PtychographyTask  # imported here: seconds, outside the timing

    t0 = time.perf_counter()
    if start is not None and not np.all(np.isfinite(start)):  # a failed start is a failed run, recorded
        return LSQMLResult("failed", empty, empty, np.zeros(0), 0.0,
                           "the initial object has non-finite pixels (LSQML would spread them)", settings)
    try:
        # exact_sqrt: pty-chi's float32 square roots, the same bits on Intel and AMD CPUs
        with warnings.catch_warnings(), exact_sqrt():
            warnings.simplefilter("ignore", UserWarning)  # pty-chi's tensor-copy advice, once per call site
            options, data = _options(ds, cfg, device, deterministic, choice, epochs, start)
            try:
                task = PtychographyTask(options, **data)
                _drop_cpu_default_device()
                # pty-chi seeds torch's global generator with random_seed, but shuffles the batches with
                # a generator of its own left at torch's default seed: reconstruct.seed orders them here
                task.reconstructor.dataloader.generator.manual_seed(cfg.seed)
                snapshots = []
                # pty-chi's run(n) continues where the last one stopped (its batch order included)
                for done in _stops(epochs, snapshot_every):
                    task.run(done - (snapshots[-1][0] if snapshots else 0))
                    snapshots.append((done, task.get_data_to_cpu("object", as_numpy=True)
                                      [0, MARGIN:-MARGIN, MARGIN:-MARGIN].astype(np.complex64)))
            finally:
                _drop_cpu_default_device()
        obj = snapshots[-1][1]
        probe = task.get_data_to_cpu("probe", as_numpy=True)[0, 0]
        cost = task.reconstructor.loss_tracker.table["loss"].to_numpy(dtype=np.float64)
    except Exception as err:  # noqa: BLE001 - any pty-chi failure is a failed job, recorded, not a crash
        log.exception("pty-chi LSQML failed")
        return LSQMLResult("failed", empty, empty, np.zeros(0), time.perf_counter() - t0,
                           f"{type(err).__name__}: {err}", settings)
    seconds = time.perf_counter() - t0
    if not (np.all(np.isfinite(obj)) and np.all(np.isfinite(probe))):
        return LSQMLResult("failed", empty, empty, cost, seconds, "pty-chi returned a non-finite object or probe",
                           settings)
    return LSQMLResult("completed", obj, probe.astype(np.complex64), cost, seconds, "", settings,
                       tuple(snapshots) if snapshot_every > 0 else ())


def _stops(epochs: int, every: int) -> list[int]:
    """The epochs after which a run stops to copy its object: every ``every``-th and the last."""
    return sorted({*range(every, epochs, every), epochs}) if every > 0 else [epochs]


# ----------------------------------------------------------------------------- the file
def save_result(path: str | Path, result: LSQMLResult, ds: Dataset, provenance: dict) -> None:
    """``ptychi_reconstruction.npz``: object, probe, per-epoch cost, positions, _metadata (no wall
    time: the file is DVC-tracked and must change only when the result does)."""
    meta = {"status": result.status, "error": result.error, "settings": result.settings, **provenance}
    write_npz(path, {
        "object": result.object, "probe": result.probe, "cost": result.cost,
        "xcoords": ds.xcoords, "ycoords": ds.ycoords,
        "_metadata": np.array(json.dumps(meta, sort_keys=True, allow_nan=False)),
    })


def load_result(path: str | Path) -> LSQMLResult:
    """Read a ``ptychi_reconstruction.npz`` (no pickle), checking its members."""
    arrays, meta = read_npz(path)
    for key, kind in (("object", "c"), ("probe", "c"), ("cost", "f")):
        if key not in arrays:
            raise ContractError(f"{path}: {key}: missing; a reconstruction file holds object, probe, cost")
        if arrays[key].dtype.kind != kind:
            raise ContractError(f"{path}: {key}: unexpected dtype {arrays[key].dtype}")
    if not isinstance(meta, dict) or meta.get("status") not in ("completed", "failed"):
        raise ContractError(f"{path}: _metadata: missing or without a status of completed/failed")
    if meta["status"] == "completed" and arrays["object"].ndim != 2:
        raise ContractError(f"{path}: object: expected a 2-D field, got shape {arrays['object'].shape}")
    return LSQMLResult(meta["status"], arrays["object"], arrays["probe"], arrays["cost"],
                       None, meta.get("error", ""), meta.get("settings", {}))


@contextlib.contextmanager
def logged_to(path: str | Path) -> Iterator[None]:
    """Copy every log record (pty-chi's included) to ``path`` while the block runs. The file
    appears, atomically, when the block ends, also when it ends in an error (then most useful)."""
    failure: BaseException | None = None
    with atomic_path(path) as tmp:
        handler = logging.FileHandler(tmp, encoding="utf-8")
        # no time stamps: the log is a DVC-tracked output, and must change only when the run does
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield
        except BaseException as err:  # noqa: BLE001 - re-raised once the log is in place
            failure = err
        finally:
            root.removeHandler(handler)
            handler.close()
    if failure is not None:
        raise failure


def run_manifest(entries: list[dict], device: str, deterministic: bool) -> dict:
    """A manifest of LSQML runs (phase F's, hybrid@'s): the entries, the numerics, and whether the bytes
    reproduce: pty-chi on one thread with pinned numerics gives the same bytes on any x86-64 CPU; a
    GPU run may differ."""
    return {"jobs": entries, "numerics": record(),
            "bitwise_reproducible": device == "cpu" and deterministic and record()["pinned"]}


def final_cost(result: LSQMLResult) -> float | None:
    return float(result.cost[-1]) if result.cost.size and math.isfinite(result.cost[-1]) else None


# ------------------------------------------------------------------------------ one job
def run_reconstruction(test: Dataset, cfg: Reconstruct, *, out_dir: str | Path, dose: str, view: str,
                       test_path: str, device: str = "cpu", deterministic: bool = True, choice: Choice = Choice(),
                       start: np.ndarray | None = None, start_note: str = "") -> tuple[dict, float | None]:
    """LSQML on one view's test split (from a flat object, or from ``start``); write
    ``ptychi_reconstruction.npz`` and ``ptychi.log`` to ``out_dir``. Returns the job's manifest entry
    (status ``failed`` with the reason if pty-chi failed) and LSQML's wall seconds, for a run record."""
    out_dir = Path(out_dir)
    npz = out_dir / RESULT_FILE
    with logged_to(out_dir / "ptychi.log"):
        log.info("pty-chi %s %s on %s: %d patterns of %dx%d, object %s from %s, %d epochs, batch %d, %s, on %s",
                 ptychi_version(), ALGORITHM, test_path, test.n, test.N, test.N, test.objectGuess.shape,
                 "a flat start" if start is None else (start_note or "a given start"), run_epochs(cfg, choice),
                 cfg.batch_size, choice, device)
        result = lsqml(test, cfg, device=device, deterministic=deterministic, choice=choice, start=start,
                       start_note=start_note)
        log.info("%s (dose=%s): %s, final cost %s", view, dose, result.status, final_cost(result))
    provenance = {"dose": dose, "nphotons": test.metadata["nphotons"], "view": view, "test_data": test_path,
                  "n_positions": test.n}
    save_result(npz, result, test, provenance)
    entry = {**provenance, "status": result.status, "error": result.error, "settings": result.settings,
             "final_cost": final_cost(result), "epochs_run": int(result.cost.size),
             "output": str(npz), "sha256": sha256_file(npz), "size": npz.stat().st_size}
    return entry, result.wall_seconds
