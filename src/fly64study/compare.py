"""Phase G, one comparison: every model of :mod:`fly64study.models` on one view's test split, against the truth.

PtychoPINN and BP-UNet are the view's own gridsize-2 bundles of the two networks, <network>+refine
the same fitted further to the test split's own counts (:mod:`fly64study.refine`), <network>+LSQML
LSQML started from its field (:mod:`fly64study.hybrid`), BP-UNet-gs1 the dose's gridsize-1 BP-UNet
bundle (trained on every position), LSQML the view's pty-chi LSQML reconstruction from a flat object; all
reconstruct the same patterns.
Each field is aligned to the ground truth on the scanned area (:func:`fly64study.metrics.align`)
and scored per component. A model that failed upstream keeps its rows, empty, with the reason.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fly64study import metrics
from fly64study.contract import Dataset
from fly64study.design import MetricsDesign
from fly64study.files import atomic_path, write_json, write_metrics
from fly64study.models import NAMES
from fly64study.plots import plot_comparison, plot_frc

# the numbers `dvc metrics show/diff` lists per comparison, four per model so that the eight models of
# fly64study.models fit one table (comparison.json, the CSV and the report hold every metric)
DVC_METRICS = ("ms_ssim_phase", "ms_ssim_amplitude", "mae_phase", "frc_resolution_phase")
CSV_COLUMNS = ("dose", "view", "model", "seed", "alignment", "metric", "amplitude", "phase", "value", "note")
FRC_COLUMNS = ("dose", "view", "model", "seed", "alignment", "component", "frequency", "frc", "half_bit")
# a model summary's keys: "<metric>_<component>" at the aligned level, "fixed_frame_" before them in the fixed frame
LEVEL_PREFIX = {"aligned": "", "fixed-frame": "fixed_frame_"}


@dataclass(frozen=True)
class Candidate:
    model: str  # a name of fly64study.models.MODELS
    field: np.ndarray | None  # (H, W) complex object in the truth's frame; None if the model failed
    seconds: float | None  # reconstruction wall time (PINN: inference + stitching; LSQML: its run); a run record
    note: str = ""  # where it came from, or why it failed
    seed: int | None = None  # the training seed of a PINN model (one candidate per seed); None: one run
    cost: dict | None = None  # what it took, in numbers: epochs_run (and a PINN's best_epoch, final_val_loss)
    settings: dict | None = None  # what it was run with (network and training, or LSQML's options)
    losses: tuple[tuple[int, float], ...] = ()  # its loss history, (epoch, value), for the exported product
    loss_name: str = ""  # what that loss is
    probe: np.ndarray | None = None  # the probe it reconstructed with, where not the known one (pty-chi's)


@dataclass(frozen=True)
class Comparison:
    rows: list[dict]  # comparison_metrics.csv
    frc_rows: list[dict]  # frc_curves.csv
    summary: dict  # comparison.json: the context and every model's headline numbers (no wall times)
    aligned: dict[str, metrics.Aligned]  # the aligned level, for the figure
    timing: dict[str, float | None]  # model -> reconstruction seconds (an untracked run record)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def over_seeds(entries: dict[int | None, dict]) -> dict:
    """One model's summary from its per-seed entries: each number is the mean over the seeds that
    completed, ``sd`` holds their sample standard deviations (two seeds or more), ``seeds`` and
    ``per_seed`` keep what each seed scored. A single run is returned as it is."""
    if len(entries) == 1:
        ((seed, entry),) = entries.items()
        return entry if seed is None else {**entry, "seeds": [seed]}
    done = {seed: e for seed, e in entries.items() if e["status"] == "completed"}
    failed = [f"seed {seed}: {e['note']}" for seed, e in entries.items() if e["status"] != "completed"]
    if not done:
        return {"status": "failed", "note": "; ".join(failed), "seeds": list(entries)}
    first = next(iter(done.values()))
    out = {"status": "completed", "note": "; ".join([f"seed {seed}: {e['note']}" for seed, e in done.items()] + failed),
           "seeds": list(done), "failed_seeds": [seed for seed in entries if seed not in done], "sd": {}}
    for key, value in first.items():
        if key in ("status", "note"):
            continue
        if _number(value) or value is None:
            values = [e[key] for e in done.values() if _number(e.get(key))]
            out[key] = float(np.mean(values)) if values else None
            if len(values) > 1:
                out["sd"][key] = float(np.std(values, ddof=1))
        else:  # the registration verdict: "ok" only if every seed's was
            bad = [f"seed {seed}: {e[key]}" for seed, e in done.items() if e.get(key) != "ok"]
            out[key] = "; ".join(bad) if bad else value
    out["per_seed"] = {str(seed): {k: v for k, v in e.items() if k not in ("status", "note")} for seed, e in done.items()}
    return out


def compare(test: Dataset, candidates: list[Candidate], *, dose: str, view: str, cfg: MetricsDesign,
            overlap: dict | None = None, stitching: dict | None = None) -> Comparison:
    """Align and score every candidate against ``test.objectGuess`` on the scanned area, at both
    alignment levels; ``overlap`` is the view's measured overlap (phase D), shown beside its f;
    ``stitching`` how the networks' patches became their fields (recorded)."""
    truth = test.objectGuess
    region = metrics.scanned_area(test.xcoords, test.ycoords, truth.shape)
    scale = float(test.metadata["intensity_scale"])
    photons = metrics.fluence(test.probeGuess, test.xcoords, test.ycoords, truth.shape, scale)[region]
    rows, frc_rows, aligned, per_seed = [], [], {}, {}
    base = {"dose": dose, "view": view}
    for cand in candidates:
        entry = {"status": "completed" if cand.field is not None else "failed", "note": cand.note,
                 **(cand.cost or {})}
        per_seed.setdefault(cand.model, {})[cand.seed] = entry
        who = {**base, "model": cand.model, "seed": cand.seed}
        if cand.field is None:
            rows += [{**who, "alignment": level, "metric": name, "note": cand.note}
                     for level in metrics.ALIGNMENTS for name in metrics.COMPONENT_METRICS]
            continue
        for level in metrics.ALIGNMENTS:
            al = metrics.align(cand.field, truth, region, level=level, max_shift=cfg.max_shift_px)
            if level == "aligned":
                aligned.setdefault(cand.model, al)  # the figure shows a model's first seed
            scores = {}
            for comp in cfg.components:
                pred, ref = (al.amplitude, al.truth_amplitude) if comp == "amplitude" else (al.phase, al.truth_phase)
                scores[comp], curve = metrics.component_metrics(pred, ref, smooth_sigma=cfg.ms_ssim_sigma,
                                                                frc_threshold=cfg.frc_threshold)
                frc_rows += [{**who, "alignment": level, "component": comp, "frequency": f,
                              "frc": c, "half_bit": h}
                             for f, c, h in zip(curve.frequency, curve.correlation, curve.half_bit)]
            prefix = LEVEL_PREFIX[level]
            for name in metrics.COMPONENT_METRICS:
                rows.append({**who, "alignment": level, "metric": name, "note": cand.note,
                             **{comp: scores[comp][name] for comp in cfg.components}})
                for comp in cfg.components:
                    entry[f"{prefix}{name}_{comp}"] = _finite(scores[comp][name])
            extras = {"registration": al.registration, "shift_y_px": al.shift_px[0], "shift_x_px": al.shift_px[1],
                      "phase_offset_rad": al.phase_plane[0], "phase_ramp_y_rad_per_px": al.phase_plane[1],
                      "phase_ramp_x_rad_per_px": al.phase_plane[2], "amplitude_scale": al.amplitude_scale}
            if level == "fixed-frame":  # nothing registered, no ramp removed: only the offset and the scale
                extras = {k: extras[k] for k in ("phase_offset_rad", "amplitude_scale")}
            rows += [{**who, "alignment": level, "metric": k, "value": v, "note": cand.note}
                     for k, v in extras.items()]
            entry.update({f"{prefix}{k}": v for k, v in extras.items()})
    summary = {
        **base, "nphotons": float(test.metadata["nphotons"]), "n_positions": test.n,
        "incident_photons_per_exposure": metrics.incident_photons(test.probeGuess, scale),
        "crop": {"rows": [region[0].start, region[0].stop], "cols": [region[1].start, region[1].stop]},
        "photons_per_pixel_mean": float(photons.mean()), "photons_per_pixel_min": float(photons.min()),
        "shot_noise_phase_bound_rad": _finite(metrics.shot_noise_phase_bound(photons)),
        "overlap": overlap or {},
        "stitching": stitching or {},
        "components": list(cfg.components),
        "frc_threshold": cfg.frc_threshold,
        "models": {model: over_seeds(entries) for model, entries in per_seed.items()},
        "settings": {},  # model -> its settings (a model's seeds share them)
    }
    for cand in candidates:
        if cand.settings is not None:
            summary["settings"].setdefault(cand.model, cand.settings)
    timing = {}
    for c in candidates:  # a model's wall time: the mean over its seeds
        timing.setdefault(c.model, []).append(c.seconds)
    return Comparison(rows=rows, frc_rows=frc_rows, summary=summary, aligned=aligned,
                      timing={m: (None if None in t else sum(t) / len(t)) for m, t in timing.items()})


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})


def dvc_metrics(summary: dict) -> dict:
    """model -> the :data:`DVC_METRICS` numbers of a comparison (means over a model's seeds, and
    ``<metric>_sd`` where several ran), for ``metrics.json`` (``dvc metrics``)."""
    return {model: {**{k: m[k] for k in DVC_METRICS if m.get(k) is not None},
                    **{f"{k}_sd": m["sd"][k] for k in DVC_METRICS if k in m.get("sd", {})}}
            for model, m in summary["models"].items() if m.get("status") == "completed"}


def write_comparison(out_dir: str | Path, comp: Comparison) -> None:
    """comparison_metrics.csv, frc_curves.csv, comparison.json (everything), metrics.json (the
    headline numbers, for ``dvc metrics``), comparison.png and frc_curves.png in ``out_dir``."""
    out = Path(out_dir)
    _write_csv(out / "comparison_metrics.csv", CSV_COLUMNS, comp.rows)
    _write_csv(out / "frc_curves.csv", FRC_COLUMNS, comp.frc_rows)
    write_json(out / "comparison.json", comp.summary)
    write_metrics(out / "metrics.json", dvc_metrics(comp.summary))
    s = comp.summary
    seeds = sorted({m["seeds"][0] for m in s["models"].values() if len(m.get("seeds", [])) > 1})
    shown = f"; PINN models: seed {', '.join(map(str, seeds))} of several" if seeds else ""
    plot_comparison(out / "comparison.png", comp.aligned, [m for m in NAMES if m in s["models"]],
                    title=f"{s['view']} view, dose {s['dose']} ({s['nphotons']:.0f} photons/pattern, "
                          f"{s['photons_per_pixel_mean']:.3g} photons/pixel), {s['n_positions']} test positions{shown}")
    plot_frc(out / "frc_curves.png", comp.frc_rows, threshold=s["frc_threshold"], title=f"FRC against the truth: {s['view']} view, dose {s['dose']}")
