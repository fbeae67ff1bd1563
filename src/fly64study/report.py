"""Phase G, the study's answer: every comparison gathered into one summary, tables and plots.

Reads each ``compare@<dose>-<view>`` summary (``comparison.json``) and each phase F manifest,
and writes ``metrics_summary.json`` / ``.md`` (per job, per model mean and best, deltas
PtychoPINN − Baseline and PtychoPINN − PtyChi), ``metrics.json`` for ``dvc metrics``, one CSV per
(plotted metric, view) for ``dvc plots``, and the same plots as PNG.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from fly64study.compare import MODELS
from fly64study.contract import ContractError
from fly64study.files import atomic_path, write_json
from fly64study.plots import plot_report

# (key in a model's summary, higher is better)
HEADLINE = (("ms_ssim_phase", True), ("ms_ssim_amplitude", True), ("mae_phase", False), ("mae_amplitude", False))
TABLE = ("ms_ssim_phase", "ms_ssim_amplitude", "mae_phase", "mae_amplitude", "frc_resolution_phase",
         "rmse_phase", "wall_time_s")
DVC_METRICS = ("ms_ssim_phase", "ms_ssim_amplitude", "mae_phase", "mae_amplitude", "frc_resolution_phase",
               "frc_resolution_amplitude", "rmse_phase", "wall_time_s")
PLOTTED = ("ms_ssim_phase", "ms_ssim_amplitude", "frc_resolution_phase")
DELTAS = (("PtychoPINN", "Baseline"), ("PtychoPINN", "PtyChi"))


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ContractError(f"{path}: cannot read ({err}); run `dvc repro` to produce it") from None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(comparisons: list[dict], reconstructions: list[dict]) -> dict:
    """The report's content from the comparison summaries (one per dose and view) and the
    phase F manifest entries (every dose and view, the full test split included)."""
    jobs = sorted(comparisons, key=lambda c: (c["view"], c["nphotons"]))
    failed = [{"dose": c["dose"], "view": c["view"], "model": m, "note": s.get("note", "")}
              for c in jobs for m, s in c["models"].items() if s["status"] != "completed"]
    per_model = {}
    for model in MODELS:
        per_model[model] = {}
        for key, higher in HEADLINE:
            pairs = [(c["models"][model][key], f"{c['view']}@{c['dose']}") for c in jobs
                     if c["models"].get(model, {}).get(key) is not None]
            best = (max if higher else min)(pairs, default=(None, None))
            per_model[model][key] = {"mean": _mean([v for v, _ in pairs]), "best": best[0], "best_job": best[1],
                                     "n": len(pairs)}
    deltas = {}
    for a, b in DELTAS:
        rows = []
        for c in jobs:
            ma, mb = c["models"].get(a, {}), c["models"].get(b, {})
            rows.append({"dose": c["dose"], "view": c["view"], **{
                key: (ma[key] - mb[key]) if ma.get(key) is not None and mb.get(key) is not None else None
                for key, _ in HEADLINE}})
        deltas[f"{a} - {b}"] = {"per_job": rows, "mean": {
            key: _mean([r[key] for r in rows if r[key] is not None]) for key, _ in HEADLINE}}
    ptychi = [{k: r.get(k) for k in ("dose", "view", "n_positions", "status", "error", "wall_seconds",
                                     "final_cost", "epochs_run")} for r in reconstructions]
    return {"models": list(MODELS), "jobs": jobs, "per_model": per_model, "deltas": deltas,
            "ptychi_runs": ptychi, "failed": failed}


def dvc_metrics(summary: dict) -> dict:
    """view -> dose -> model -> headline numbers, for ``dvc metrics show/diff``."""
    out: dict = {}
    for c in summary["jobs"]:
        out.setdefault(c["view"], {})[c["dose"]] = {
            model: {k: s[k] for k in DVC_METRICS if s.get(k) is not None} for model, s in c["models"].items()}
    return out


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}f}"
    return str(v)


def markdown(summary: dict) -> str:
    lines = ["# Study report: PtychoPINN, Baseline and PtyChi against dose and overlap", "",
             "All numbers on each view's held-out test split, after sub-pixel registration, phase offset and "
             "ramp removal and amplitude scaling to the ground truth, on the scanned area. MS-SSIM: 5 levels; "
             "FRC resolution: first crossing of 0.5, cycles per pixel (Nyquist 0.5). Photons per pixel: incident, "
             "summed over exposures; shot-noise bound on the phase: RMS of 1/(2·sqrt(n)).", "",
             "## Per job", "",
             "| view | dose | photons/pattern | photons/pixel | phase bound (rad) | model | "
             + " | ".join(TABLE) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(TABLE)]
    for c in summary["jobs"]:
        for model in MODELS:
            s = c["models"].get(model, {"status": "missing"})
            vals = [_fmt(s.get(k), 1 if k == "wall_time_s" else 3) for k in TABLE] if s["status"] == "completed" \
                else [f"failed: {s.get('note', '')}"] + [""] * (len(TABLE) - 1)
            lines.append(f"| {c['view']} | {c['dose']} | {c['nphotons']:.0f} | {c['photons_per_pixel_mean']:.3g} | "
                         f"{_fmt(c['shot_noise_phase_bound_rad'])} | {model} | " + " | ".join(vals) + " |")
    lines += ["", "## Per model: mean and best over jobs", "",
              "| model | " + " | ".join(f"{k} mean | {k} best (job)" for k, _ in HEADLINE) + " |",
              "|---|" + "---|---|" * len(HEADLINE)]
    for model, stats in summary["per_model"].items():
        lines.append(f"| {model} | " + " | ".join(
            f"{_fmt(stats[k]['mean'])} | {_fmt(stats[k]['best'])} ({stats[k]['best_job'] or '—'})"
            for k, _ in HEADLINE) + " |")
    for name, d in summary["deltas"].items():
        lines += ["", f"## {name}", "", "| view | dose | " + " | ".join(k for k, _ in HEADLINE) + " |",
                  "|---|---|" + "---|" * len(HEADLINE)]
        for r in d["per_job"]:
            lines.append(f"| {r['view']} | {r['dose']} | " + " | ".join(_fmt(r[k]) for k, _ in HEADLINE) + " |")
        lines.append("| **mean** | | " + " | ".join(_fmt(d["mean"][k]) for k, _ in HEADLINE) + " |")
    lines += ["", "Positive MS-SSIM deltas and negative MAE deltas favour PtychoPINN.", "",
              "## pty-chi runs (phase F)", "", "| view | dose | positions | status | epochs | final cost | wall time (s) |",
              "|---|---|---|---|---|---|---|"]
    for r in summary["ptychi_runs"]:
        status = r["status"] if r["status"] == "completed" else f"failed: {r['error']}"
        lines.append(f"| {r['view']} | {r['dose']} | {r['n_positions']} | {status} | {r['epochs_run']} | "
                     f"{_fmt(r['final_cost'], 4)} | {_fmt(r['wall_seconds'], 1)} |")
    if summary["failed"]:
        lines += ["", "## Failed", ""] + [f"- {f['model']} at {f['view']}@{f['dose']}: {f['note']}"
                                          for f in summary["failed"]]
    return "\n".join(lines) + "\n"


def write_plot_tables(folder: Path, summary: dict) -> None:
    """``<metric>_<view>.csv``: nphotons, photons_per_pixel, one column per model (dvc plots' y)."""
    views = sorted({c["view"] for c in summary["jobs"]})
    for metric in PLOTTED:
        for view in views:
            with atomic_path(folder / f"{metric}_{view}.csv") as tmp:
                with open(tmp, "w", newline="") as fh:
                    w = csv.writer(fh, lineterminator="\n")
                    w.writerow(["nphotons", "photons_per_pixel", *MODELS])
                    for c in (c for c in summary["jobs"] if c["view"] == view):
                        vals = [c["models"].get(m, {}).get(metric) for m in MODELS]
                        w.writerow([f"{c['nphotons']:g}", f"{c['photons_per_pixel_mean']:.6g}",
                                    *("" if v is None else f"{v:.6g}" for v in vals)])


def write_report(out_dir: str | Path, summary: dict) -> None:
    out = Path(out_dir)
    write_json(out / "metrics_summary.json", summary)
    with atomic_path(out / "metrics_summary.md") as tmp:
        tmp.write_text(markdown(summary))
    write_json(out / "metrics.json", dvc_metrics(summary))
    write_plot_tables(out / "plots", summary)
    plot_report(out, summary, MODELS)
