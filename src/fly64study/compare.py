"""Phase G, one comparison: PtychoPINN, Baseline and PtyChi on one view's test split, against the truth.

PtychoPINN is the view's own gridsize-2 bundle, Baseline the dose's gridsize-1 bundle (trained on
every position), PtyChi the view's LSQML reconstruction; all three reconstruct the same patterns.
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
from fly64study.files import atomic_path, write_json
from fly64study.plots import plot_comparison

MODELS = ("PtychoPINN", "Baseline", "PtyChi")
COMPONENT_METRICS = ("ms_ssim", "ssim", "mae", "mse", "rmse", "psnr", "frc_resolution")
CSV_COLUMNS = ("dose", "view", "model", "metric", "amplitude", "phase", "value", "note")


@dataclass(frozen=True)
class Candidate:
    model: str  # one of MODELS
    field: np.ndarray | None  # (H, W) complex object in the truth's frame; None if the model failed
    seconds: float | None  # reconstruction wall time (PINN: inference + stitching; PtyChi: LSQML)
    note: str = ""  # where it came from, or why it failed


@dataclass(frozen=True)
class Comparison:
    rows: list[dict]  # comparison_metrics.csv
    frc_rows: list[dict]  # frc_curves.csv
    summary: dict  # comparison.json: the context and every model's headline numbers
    aligned: dict[str, metrics.Aligned]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def compare(test: Dataset, candidates: list[Candidate], *, dose: str, view: str, cfg: MetricsDesign) -> Comparison:
    """Align and score every candidate against ``test.objectGuess`` on the scanned area."""
    truth = test.objectGuess
    region = metrics.scanned_area(test.xcoords, test.ycoords, truth.shape)
    photons = metrics.fluence(test.probeGuess, test.xcoords, test.ycoords, truth.shape,
                              float(test.metadata["nphotons"]))[region]
    rows, frc_rows, aligned, per_model = [], [], {}, {}
    base = {"dose": dose, "view": view}
    for cand in candidates:
        entry = {"status": "completed" if cand.field is not None else "failed", "note": cand.note,
                 "wall_time_s": cand.seconds}
        if cand.field is None:
            for name in COMPONENT_METRICS:
                rows.append({**base, "model": cand.model, "metric": name, "note": cand.note})
            rows.append({**base, "model": cand.model, "metric": "wall_time_s", "note": cand.note})
            per_model[cand.model] = entry
            continue
        al = metrics.align(cand.field, truth, region)
        aligned[cand.model] = al
        scores = {}
        for comp, pred, ref, sigma in (("amplitude", al.amplitude, al.truth_amplitude, cfg.ms_ssim_sigma),
                                       ("phase", al.phase, al.truth_phase, 0.0)):
            scores[comp], curve = metrics.component_metrics(pred, ref, smooth_sigma=sigma,
                                                            frc_threshold=cfg.frc_threshold)
            frc_rows += [{**base, "model": cand.model, "component": comp, "frequency": f, "frc": c, "half_bit": h}
                         for f, c, h in zip(curve.frequency, curve.correlation, curve.half_bit)]
        for name in COMPONENT_METRICS:
            rows.append({**base, "model": cand.model, "metric": name, "amplitude": scores["amplitude"][name],
                         "phase": scores["phase"][name], "note": cand.note})
            for comp in ("amplitude", "phase"):
                entry[f"{name}_{comp}"] = _finite(scores[comp][name])
        extras = {"wall_time_s": cand.seconds, "shift_y_px": al.shift_px[0], "shift_x_px": al.shift_px[1],
                  "phase_offset_rad": al.phase_plane[0], "amplitude_scale": al.amplitude_scale}
        rows += [{**base, "model": cand.model, "metric": k, "value": v, "note": cand.note} for k, v in extras.items()]
        entry.update({k: v for k, v in extras.items() if k != "wall_time_s"})
        per_model[cand.model] = entry
    summary = {
        **base, "nphotons": float(test.metadata["nphotons"]), "n_positions": test.n,
        "crop": {"rows": [region[0].start, region[0].stop], "cols": [region[1].start, region[1].stop]},
        "photons_per_pixel_mean": float(photons.mean()), "photons_per_pixel_min": float(photons.min()),
        "shot_noise_phase_bound_rad": _finite(metrics.shot_noise_phase_bound(photons)),
        "models": per_model,
    }
    return Comparison(rows=rows, frc_rows=frc_rows, summary=summary, aligned=aligned)


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_comparison(out_dir: str | Path, comp: Comparison) -> None:
    """comparison_metrics.csv, frc_curves.csv, comparison.json and comparison.png in ``out_dir``."""
    out = Path(out_dir)
    _write_csv(out / "comparison_metrics.csv", CSV_COLUMNS, comp.rows)
    _write_csv(out / "frc_curves.csv", ("dose", "view", "model", "component", "frequency", "frc", "half_bit"),
               comp.frc_rows)
    write_json(out / "comparison.json", comp.summary)
    s = comp.summary
    plot_comparison(out / "comparison.png", comp.aligned,
                    title=f"{s['view']} view, dose {s['dose']} ({s['nphotons']:.0f} photons/pattern, "
                          f"{s['photons_per_pixel_mean']:.3g} photons/pixel), {s['n_positions']} test positions")
