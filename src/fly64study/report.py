"""Phase G, the study's answer: every comparison gathered into one summary, tables and plots.

Reads each ``compare@<dose>-<view>`` summary (``comparison.json``) and each phase F manifest,
and writes ``metrics_summary.json`` / ``.md`` (per job, per model mean and best, the
:data:`DELTAS`), one CSV per (plotted metric, view) for
``dvc plots``, and the same plots as PNG. The numbers ``dvc metrics`` lists are each comparison's
own ``metrics.json`` (phase G), not repeated here.
"""
from __future__ import annotations

import csv
import math
import os
import statistics
from pathlib import Path

from fly64study.contract import ContractError, read_json
from fly64study.files import atomic_path, write_json
from fly64study.models import DELTAS, PAIRED, PINN_BASED, PLAIN
from fly64study.models import NAMES as MODELS
from fly64study.plots import plot_report
from fly64study.report_html import write_html

# (key in a model's summary, higher is better)
HEADLINE = (("ms_ssim_phase", True), ("fixed_frame_ms_ssim_phase", True), ("ms_ssim_amplitude", True),
            ("mae_phase", False), ("mae_amplitude", False))
TABLE = ("ms_ssim_phase", "fixed_frame_ms_ssim_phase", "ms_ssim_smoothed_phase", "ms_ssim_amplitude",
         "ms_ssim_smoothed_amplitude", "mae_phase", "mae_amplitude", "frc_resolution_phase",
         "frc_low_frequency_phase", "rmse_phase")
PLOTTED = ("ms_ssim_phase", "ms_ssim_amplitude", "frc_resolution_phase")
# The study's quality targets, on the compared view of the largest overlap: the best plain network's
# phase MS-SSIM against LSQML's (LSQML as tune@<dose>-<view> chose it) at every dose and its likelihood
# gap closed at the highest dose, the best PINN-based model at the lowest dose, and each plain network's
# spread over seeds. The best plain network of a job is chosen without the test split: the one that
# closes more of the likelihood gap on its training split (thinned counts; fly64study.likelihood).
# The report gives every measured value beside its target, met or not: the study's answer is an honest one.
PINN_RATIO_TARGET = 0.95
GAP_CLOSED_TARGET = 0.99
BEST_PINN_RATIO_TARGET = 1.0
SEED_SD_TARGET = 0.02
GAP_KEYS = ("likelihood_gap_closed", "likelihood_gap_closed_thinned")  # a trained model's, on its training split


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _significance(ma: dict, mb: dict, key: str, delta: float | None,
                  paired: bool = False) -> tuple[float | None, bool | None]:
    """The combined spread sqrt(sd_a² + sd_b²) of a delta between two models' means, and whether the
    delta exceeds it. A model with one run adds no spread, and with no spread at all (no model ran
    several seeds) nothing is called significant: None, None. ``paired`` (a model made from the
    other, seed by seed): the sd of the per-seed differences instead, where both have the same seeds."""
    pa, pb = ma.get("per_seed", {}), mb.get("per_seed", {})
    if paired and delta is not None and len(pa) > 1 and set(pa) == set(pb):
        diffs = [pa[s][key] - pb[s][key] for s in pa if pa[s].get(key) is not None and pb[s].get(key) is not None]
        if len(diffs) == len(pa):
            spread = statistics.stdev(diffs)
            return spread, abs(delta) > spread
    sds = [m.get("sd", {}).get(key) for m in (ma, mb)]
    if delta is None or all(sd is None for sd in sds):
        return None, None
    spread = math.sqrt(sum(sd**2 for sd in sds if sd is not None))
    return spread, abs(delta) > spread


def _met(value: float | None, target: float | None, higher: bool = True) -> bool | None:
    if value is None or target is None:
        return None
    return value >= target if higher else value <= target


def targets(jobs: list[dict]) -> dict:
    """Each model's phase MS-SSIM as a ratio to LSQML's for every job, the best plain network of each job
    of the largest overlap against :data:`PINN_RATIO_TARGET` (and :data:`GAP_CLOSED_TARGET` at its
    highest dose), the best PINN-based model at its lowest dose against :data:`BEST_PINN_RATIO_TARGET`,
    whether each model's mean rises with the dose on each view, and each spread over seeds (against
    :data:`SEED_SD_TARGET` for the plain networks).
    ``jobs``: comparison summaries, in any order."""
    key = "ms_ssim_phase"
    jobs = sorted(jobs, key=lambda c: (c["view"], c["nphotons"]))
    densest = max(jobs, key=lambda c: c.get("overlap", {}).get("f") or -1.0)["view"] if jobs else None
    ratios, best_plain = [], []
    for c in jobs:
        reference = c["models"].get("LSQML", {}).get(key)
        for model in MODELS:
            value = c["models"].get(model, {}).get(key)
            if model == "LSQML" or value is None:
                continue
            ratio = value / reference if reference else None
            ratios.append({"view": c["view"], "dose": c["dose"], "model": model, "ratio": ratio,
                           "target": None, "met": None})
        if c["view"] == densest:
            best_plain.append(_best_plain(c, reference, key, c is jobs_on(jobs, densest)[-1]))
    lowest = next((c["dose"] for c in jobs if c["view"] == densest), None)
    # the best PINN-based model at the lowest dose; on a tie the plain network (a refinement that
    # kept the trained network changed nothing)
    best = max(((r["ratio"], -PINN_BASED.index(r["model"]), r["model"]) for r in ratios
                if r["model"] in PINN_BASED and (r["view"], r["dose"]) == (densest, lowest)
                and r["ratio"] is not None), default=(None, 0, None))
    best_pinn = None if lowest is None else {
        "view": densest, "dose": lowest, "model": best[2], "ratio": best[0],
        "target": BEST_PINN_RATIO_TARGET, "met": _met(best[0], BEST_PINN_RATIO_TARGET)}
    monotone = []
    for view in dict.fromkeys(c["view"] for c in jobs):
        on_view = [c for c in jobs if c["view"] == view]
        for model in (m for m in MODELS if any(m in c["models"] for c in on_view)):
            values = [c["models"].get(model, {}).get(key) for c in on_view]
            # non-decreasing; not judged with a missing value or a single dose
            rising = None if None in values or len(values) < 2 else all(a <= b for a, b in zip(values, values[1:]))
            monotone.append({"view": view, "model": model, "doses": [c["dose"] for c in on_view],
                             "values": values, "monotone": rising})
    spread = []
    for c in jobs:
        for model in MODELS:
            sd = c["models"].get(model, {}).get("sd", {}).get(key)
            if sd is not None:
                target = SEED_SD_TARGET if c["view"] == densest and model in PLAIN else None
                spread.append({"view": c["view"], "dose": c["dose"], "model": model,
                               "seeds": len(c["models"][model].get("seeds", [])), "sd": sd, "target": target,
                               "met": _met(sd, target, higher=False)})
    return {"metric": key, "view": densest, "ratios": ratios, "best_plain": best_plain,
            "best_pinn_at_lowest_dose": best_pinn, "monotone_in_dose": monotone, "seed_spread": spread}


def jobs_on(jobs: list[dict], view: str) -> list[dict]:
    """A view's comparisons, lowest dose first."""
    return sorted((c for c in jobs if c["view"] == view), key=lambda c: c["nphotons"])


def _best_plain(c: dict, reference: float | None, key: str, highest_dose: bool) -> dict:
    """The plain network (:data:`fly64study.models.PLAIN`) of one job that closes more of its likelihood
    gap on the training split (thinned counts, then full counts), its ratio to LSQML against
    :data:`PINN_RATIO_TARGET`, and at the view's highest dose its gap closed (thinned) against :data:`GAP_CLOSED_TARGET`."""
    scored = [(c["models"][m].get(GAP_KEYS[1]), c["models"][m].get(GAP_KEYS[0]), m) for m in PLAIN
              if c["models"].get(m, {}).get("status") == "completed"]
    ranked = sorted(scored, key=lambda t: (t[0] is not None, t[0] or 0.0, t[1] or 0.0), reverse=True)
    model = ranked[0][2] if ranked else None
    m = c["models"].get(model, {}) if model else {}
    value = m.get(key)
    ratio = value / reference if value is not None and reference else None
    gap = m.get(GAP_KEYS[1])  # thinned: a network that fits the noise it sees scores no higher there
    return {"view": c["view"], "dose": c["dose"], "model": model, "chosen_by": "likelihood gap closed on the training "
            "split (thinned counts)", "gap_closed": m.get(GAP_KEYS[0]), "gap_closed_thinned": gap,
            "ratio": ratio, "target": PINN_RATIO_TARGET, "met": _met(ratio, PINN_RATIO_TARGET),
            "gap_target": GAP_CLOSED_TARGET if highest_dose else None,
            "gap_met": _met(gap, GAP_CLOSED_TARGET) if highest_dose else None}


# LSQML's training-split MS-SSIM rising by no more than this per epoch over its last scored
# interval is flat: a judgement (1e5 on the default profile rose 0.00016 per epoch at 30 epochs
# and 0.00006 per epoch on to 60; 1e3 rose 0.0024 per epoch at 30)
FLAT_GAIN_PER_EPOCH = 0.0002


def lsqml_tuning(record: dict) -> dict:
    """What one tune@<dose>-<view> record says of its choice: the settings, the epochs against the cap, the
    score, and its gain per epoch over the last scored interval. Where the epochs are the cap and it
    still rose by more than :data:`FLAT_GAIN_PER_EPOCH`, LSQML stopped before converging."""
    dose, view = record.get("dose"), record.get("view")
    what, fix = f"lsqml_tuning.json of {view or '<view>'}@{dose}", f"run `dvc repro tune@{dose}-{view or '<view>'}`"
    if view is None:
        raise ContractError(f"{what}: no view (a record from before each view was tuned on its own); {fix}")
    try:
        chosen, cap = record["chosen"], record["max_epochs"]
        row = next((r for r in record["grid"] if all(r[k] == chosen[k] for k in ("noise_model", "tv_weight",
                                                                                  "step_size"))), None)
        curve = [(e, ms) for e, ms in row["ms_ssim_phase_by_epoch"] if ms is not None] if row else None
        epochs = chosen["epochs"]
    except (KeyError, TypeError) as err:
        raise ContractError(f"{what}: no {err} (a record from before LSQML's epochs were tuned?); {fix}") from None
    if row is None:
        raise ContractError(f"{what}: the chosen point {chosen} is not in its grid; {fix}")
    gain = (curve[-1][1] - curve[-2][1]) / (curve[-1][0] - curve[-2][0]) if len(curve) > 1 else None
    return {"dose": dose, "view": view, **chosen, "max_epochs": cap, "ms_ssim_phase": row["ms_ssim_phase"],
            "gain_per_epoch": gain,
            "still_rising_at_cap": bool(epochs == cap and gain is not None and gain > FLAT_GAIN_PER_EPOCH)}


def load_tunings(root: Path, doses, views) -> list[dict]:
    """Every tune@<dose>-<view> record under ``root`` (``dose_<d>/<view>/lsqml_tuning.json``), view by
    view as the tables list them, each checked to be the tuning of the dose and view its path names."""
    records = []
    for view in views:
        for dose in doses:
            path = Path(root) / f"dose_{dose}" / view / "lsqml_tuning.json"
            record, fix = read_json(path), f"run `dvc repro tune@{dose}-{view}`"
            if "view" not in record:
                raise ContractError(f"{path}: no view (a record from before each view was tuned on its own); {fix}")
            if (record.get("dose"), record["view"]) != (dose, view):
                raise ContractError(f"{path}: the tuning of {record['view']}@{record.get('dose')}, not {view}@{dose}; {fix}")
            records.append(record)
    return records


def summarise(comparisons: list[dict], reconstructions: list[dict], tunings: list[dict] = ()) -> dict:
    """The report's content from the comparison summaries (one per dose and view), the phase F
    manifest entries (every dose and compared view) and the tune@<dose>-<view> records."""
    jobs = sorted(comparisons, key=lambda c: (c["view"], c["nphotons"]))
    failed = [{"dose": c["dose"], "view": c["view"], "model": m, "note": s.get("note", "")}
              for c in jobs for m, s in c["models"].items() if s["status"] != "completed"]
    # the models this profile ran (a profile may leave refine or a network's +LSQML out): not failures
    ran = [m for m in MODELS if any(m in c["models"] for c in jobs)]
    per_model = {}
    for model in ran:
        per_model[model] = {}
        for key, higher in HEADLINE:
            pairs = [(c["models"][model][key], f"{c['view']}@{c['dose']}") for c in jobs
                     if c["models"].get(model, {}).get(key) is not None]
            best = (max if higher else min)(pairs, default=(None, None))
            per_model[model][key] = {"mean": _mean([v for v, _ in pairs]), "best": best[0], "best_job": best[1],
                                     "n": len(pairs)}
    deltas = {}
    for a, b in ((a, b) for a, b in DELTAS if a in ran and b in ran):
        paired = (a, b) in PAIRED
        rows = []
        for c in jobs:
            ma, mb = c["models"].get(a, {}), c["models"].get(b, {})
            row = {"dose": c["dose"], "view": c["view"]}
            for key, _ in HEADLINE:
                both = ma.get(key) is not None and mb.get(key) is not None
                row[key] = (ma[key] - mb[key]) if both else None
                row[f"{key}_spread"], row[f"{key}_significant"] = _significance(ma, mb, key, row[key], paired)
            rows.append(row)
        deltas[f"{a} - {b}"] = {"per_job": rows, "mean": {
            key: _mean([r[key] for r in rows if r[key] is not None]) for key, _ in HEADLINE}}
    ptychi = [{k: r.get(k) for k in ("dose", "view", "n_positions", "status", "error", "final_cost",
                                     "epochs_run", "settings")} for r in reconstructions]
    registration = [{"dose": c["dose"], "view": c["view"], "model": m, "registration": s["registration"]}
                    for c in jobs for m, s in c["models"].items()
                    if s["status"] == "completed" and s.get("registration", "ok") != "ok"]
    settings = {}  # model -> each distinct setting it ran with, and the jobs (view@dose) that used it
    for c in jobs:
        for model, setting in c.get("settings", {}).items():
            variants = settings.setdefault(model, [])
            match = next((v for v in variants if v["settings"] == setting), None)
            if match is None:
                variants.append(match := {"settings": setting, "jobs": []})
            match["jobs"].append(f"{c['view']}@{c['dose']}")
    lsqml_rows = [lsqml_tuning(t) for t in tunings]
    stopped_early = {(t["dose"], t["view"]) for t in lsqml_rows if t["still_rising_at_cap"]}
    target_rows = targets(jobs)
    best = target_rows["best_pinn_at_lowest_dose"]
    for r in target_rows["ratios"] + target_rows["best_plain"] + ([best] if best else []):  # a ratio to an LSQML stopped while still
        r["ptychi_stopped_early"] = (r["dose"], r["view"]) in stopped_early  # improving likely flatters the model
    networks = [{"view": c["view"], "dose": c["dose"], "ptychi_ms_ssim_phase": c["models"].get("LSQML", {}).get(
        "ms_ssim_phase"), "models": {m: _network_row(c["models"][m]) for m in (*PLAIN, "BP-UNet-gs1")
                                     if c["models"].get(m, {}).get("status") == "completed"}} for c in jobs]
    return {"models": ran, "jobs": jobs, "per_model": per_model, "deltas": deltas, "settings": settings,
            "networks": networks, "targets": target_rows, "ptychi_runs": ptychi, "lsqml_tuning": lsqml_rows,
            "failed": failed, "registration_failures": registration}


def _network_row(m: dict) -> dict:
    """A trained model's likelihood gap closed (training split) and phase MS-SSIM (test split), each a
    mean over its seeds with the sd where several ran."""
    keys = (*GAP_KEYS, "ms_ssim_phase")
    return {"seeds": len(m.get("seeds", [])) or 1, **{k: m.get(k) for k in keys},
            "sd": {k: m["sd"][k] for k in keys if k in m.get("sd", {})}}


def _stitching_line(jobs: list[dict]) -> list[str]:
    """How the networks' patches became fields (compare.stitching, compare.synchronise_phases), once."""
    ways = {(j.get("stitching", {}).get("method"), j.get("stitching", {}).get("synchronise_phases")) for j in jobs}
    if len(ways) != 1 or None in next(iter(ways)):
        return []
    method, sync = next(iter(ways))
    return [f"Networks' fields: their patches stitched with |P|² weights, `{method}` "
            + ("(each position's patch once)" if method == "one_per_position" else
               "(every member of a group seeded at every position, |P|²-weighted rather than centre-cropped as upstream's)")
            + ("; each patch's constant phase, which no pattern fixes, first synchronised with its neighbours'"
               if sync else "; patches' constant phases as the network gave them") + ".", ""]


def _fmt_sd(model: dict, key: str) -> str:
    """A model's value, with ± its sd over seeds where several ran."""
    sd = model.get("sd", {}).get(key)
    return _fmt(model.get(key)) + ("" if sd is None else f" ± {_fmt(sd)}")


def _fmt_delta(row: dict, key: str) -> str:
    """A delta, with its combined spread and a * where it exceeds it."""
    spread, significant = row.get(f"{key}_spread"), row.get(f"{key}_significant")
    if row[key] is None or spread is None:
        return _fmt(row[key])
    return f"{row[key]:+.3f} ± {spread:.3f}" + (" *" if significant else "")


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}f}"
    return str(v)


HEADER = """All numbers on each view's held-out test split (which no model trained on; the +refine and +LSQML
models and LSQML fit its measured counts, never its truth), on the scanned area, at two
alignment levels: **aligned** (sub-pixel registration bounded by design.metrics.max_shift_px, phase
offset and ramp removed, amplitude scaled to the truth's mean) and **fixed frame** (phase offset and
amplitude scale only: probe and positions are known, so a shift or a phase ramp is an error of the
reconstruction and stays in). Columns without a prefix are aligned; `fixed_frame_` columns are in the fixed frame.

MS-SSIM: 5 levels, Wang 2003 weights, data range of the truth, the same treatment for amplitude and
phase: unsmoothed (headline) and, as `ms_ssim_smoothed_*`, after a Gaussian of design.metrics.ms_ssim_sigma
px on both images. FRC resolution: the first crossing of the threshold that stays below it for 3 rings
(rings with under 16 Fourier pixels ignored), cycles per pixel, Nyquist 0.5; `frc_low_frequency`: the
mean FRC up to 0.05 cycles/px (patch-to-patch offsets show there, not in the resolution).

Dose: the label is the mean number of DETECTED photons per pattern; incident photons per exposure are
s²·Σ|P|² (what a transparent object would give). Photons per pixel: incident, spread as |P|²/Σ|P|² and
summed over exposures; the shot-noise bound on the phase is the RMS of 1/(2·sqrt(n)) over the crop.
Overlap: f is the design's spacing rule, S = (1 − f)·D; "measured" is the mean disc overlap of each test
position with its nearest neighbours (phase D metrics). Wall times are not here (they would change the
tracked report on every run): see data/timing/report_timing.md."""


def _verdict(met: bool | None, target: float | None, missing: str = "a model failed") -> str:
    if target is None:
        return ""
    return f"not scored ({missing})" if met is None else ("met" if met else "**missed**")


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def _networks_markdown(rows: list[dict]) -> list[str]:
    """Per job: each network's likelihood gap closed on its training split and phase MS-SSIM on the test split."""
    if not rows:
        return []
    lines = ["", "## The networks: likelihood gap (training split) and accuracy (test split)", "",
             "Likelihood gap closed: on the job's TRAINING split, groups formed as training forms them, the share of "
             "the mean Poisson NLL per pixel between a flat object (the best constant transmission) and the true "
             "patches that the network's patches close (100 % = the truth's fit): on the full counts, and with the "
             "network's input and the scored counts from two independent halves of a count-thinning split (thinned: a "
             "network that reproduced the noise it sees could not score above the truth there). It reads the training "
             "split's truth only, as every choice in the study may. Means over seeds ± sd where several ran.", "",
             "| view | dose | model | seeds | gap closed (full counts) | gap closed (thinned) | phase MS-SSIM | LSQML |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for model, m in r["models"].items():
            sd = m["sd"]

            def pct(key):
                return _pct(m[key]) + (f" ± {100 * sd[key]:.1f}" if key in sd else "")

            ms = _fmt(m["ms_ssim_phase"]) + (f" ± {_fmt(sd['ms_ssim_phase'])}" if "ms_ssim_phase" in sd else "")
            lines.append(f"| {r['view']} | {r['dose']} | {model} | {m['seeds']} | {pct(GAP_KEYS[0])} | "
                         f"{pct(GAP_KEYS[1])} | {ms} | {_fmt(r['ptychi_ms_ssim_phase'])} |")
    return lines


def _targets_markdown(t: dict) -> list[str]:
    view = t["view"]
    lines = ["", "## Against the study's targets", "",
             f"On the {view} view (the largest overlap): the best plain network (of {', '.join(PLAIN)}; per job the one "
             "that closes more of its likelihood gap on the training split, thinned counts: no test-split number "
             f"chooses it) ≥ {PINN_RATIO_TARGET}× LSQML's phase MS-SSIM at every dose and closing ≥ "
             f"{100 * GAP_CLOSED_TARGET:.0f} % of its likelihood gap (thinned counts) at the highest dose; the best "
             f"PINN-based model ≥ {BEST_PINN_RATIO_TARGET}× at the lowest dose; each plain network's sd over seeds ≤ "
             f"{SEED_SD_TARGET} at every dose (where several seeds ran); on every view, every model's phase MS-SSIM "
             f"rising with the dose (means over seeds). PINN-based: {', '.join(PINN_BASED)} (a +LSQML model's object is "
             "LSQML's, started from the network's field). A missed target is the study's finding, not a failed run.", "",
             "| view | dose | best plain network | gap closed (full / thinned) | / LSQML | target | | gap target | |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in t["best_plain"]:
        early = " (LSQML stopped early)" if r.get("ptychi_stopped_early") and r["ratio"] is not None else ""
        gap_target = "" if r["gap_target"] is None else f"≥ {100 * r['gap_target']:.0f} %"
        lines.append(f"| {r['view']} | {r['dose']} | {r['model'] or '—'} | {_pct(r['gap_closed'])} / "
                     f"{_pct(r['gap_closed_thinned'])} | {_fmt(r['ratio'], 4)}{early} | ≥ {r['target']} | "
                     f"{_verdict(r['met'], r['target'])} | {gap_target} | {_verdict(r['gap_met'], r['gap_target'], 'no gap')} |")
    lines += ["", "Every model's phase MS-SSIM as a ratio to LSQML's on the same job:", "",
              "| view | dose | model | / LSQML |", "|---|---|---|---|"]
    for r in t["ratios"]:
        early = " (LSQML stopped early)" if r.get("ptychi_stopped_early") and r["ratio"] is not None else ""
        lines.append(f"| {r['view']} | {r['dose']} | {r['model']} | {_fmt(r['ratio'], 4)}{early} |")
    b = t["best_pinn_at_lowest_dose"]
    if b is not None:
        early = ", LSQML stopped early" if b.get("ptychi_stopped_early") else ""
        lines += ["", f"Best PINN-based model at {b['view']}@{b['dose']}: {b['model'] or '—'}, "
                      f"{_fmt(b['ratio'], 4)}× LSQML (target ≥ {b['target']}×: {_verdict(b['met'], b['target'])}{early})."]
    lines += ["", "| view | model | phase MS-SSIM by dose | rising with dose |", "|---|---|---|---|"]
    for m in t["monotone_in_dose"]:
        by_dose = ", ".join(f"{d} {_fmt(v)}" for d, v in zip(m["doses"], m["values"]))
        lines.append(f"| {m['view']} | {m['model']} | {by_dose} | "
                     f"{'—' if m['monotone'] is None else ('yes' if m['monotone'] else '**no**')} |")
    if t["seed_spread"]:
        lines += ["", "| view | dose | model | seeds | sd over seeds | target | |", "|---|---|---|---|---|---|---|"]
        for r in t["seed_spread"]:
            target = "" if r["target"] is None else f"≤ {r['target']}"
            lines.append(f"| {r['view']} | {r['dose']} | {r['model']} | {r['seeds']} | {_fmt(r['sd'])} | {target} | "
                         f"{_verdict(r['met'], r['target'])} |")
    return lines


def _unconverged_note(tunings: list[dict]) -> list[str]:
    unconverged = [f"{t['view']}@{t['dose']}" for t in tunings if t["still_rising_at_cap"]]
    if not unconverged:
        return []
    return ["", f"LSQML (from a flat object) was stopped at its cap (reconstruct.epochs) while still improving on the training "
                f"split at {', '.join(unconverged)} (the LSQML tuning table below): a ratio to it there is "
                "likely higher than a ratio to a converged LSQML would be."]


def _tuning_markdown(tunings: list[dict]) -> list[str]:
    if not tunings:
        return []
    lines = ["", "LSQML's choice per view and dose, on the view's training split (phase MS-SSIM against its own truth, scored every "
             "reconstruct.tune.score_every epochs; gain: per epoch over the last scored interval). Where the chosen "
             f"epochs are the cap and the score still rose by more than {FLAT_GAIN_PER_EPOCH} per epoch (a judgement "
             "call), LSQML stopped before converging, and its rows here are likely below what it would reach.", "",
             "| view | dose | noise model | TV weight | step | epochs (at most) | training-split MS-SSIM | gain / epoch | "
             "at the cap |", "|---|---|---|---|---|---|---|---|---|"]
    for t in tunings:
        if t["gain_per_epoch"] is None:
            verdict = "—"
        elif t["epochs"] < t["max_epochs"]:
            verdict = "below it: the score peaked earlier"
        else:
            verdict = "**still rising**" if t["still_rising_at_cap"] else "flat"
        gain = "—" if t["gain_per_epoch"] is None else f"{t['gain_per_epoch']:+.5f}"
        lines.append(f"| {t['view']} | {t['dose']} | {t['noise_model']} | {_fmt(t['tv_weight'])} | {_fmt(t['step_size'])} | "
                     f"{t['epochs']} ({t['max_epochs']}) | {_fmt(t['ms_ssim_phase'], 4)} | {gain} | {verdict} |")
    return lines


FIGURES = (("ms_ssim_vs_dose.png", "Phase and amplitude MS-SSIM against dose, one panel per view and "
             "component, one line per model (error bars: the sd over seeds where several ran)."),
           ("frc_and_phase_error_vs_fluence.png", "FRC resolution of the phase (cycles per pixel, Nyquist 0.5) and "
            "phase RMSE (rad) against the incident photons per object pixel, one line per model and view, beside the "
            "shot-noise bound 1/(2√n)."))


def findings(summary: dict) -> list[str]:
    """The targets' verdicts, one line each (the detail is in the targets section)."""
    t = summary["targets"]
    view, lines = t["view"], []
    plain = t["best_plain"]
    if plain:
        met = [r["met"] for r in plain]  # a miss at one dose is a miss, whatever another dose could not score
        verdict = "**missed**" if False in met else ("not scored" if None in met else "met")
        lines.append(f"- Best plain network ≥ {PINN_RATIO_TARGET}× LSQML's phase MS-SSIM at every {view} dose: {verdict} ("
                     + ", ".join(f"{r['model']} {_fmt(r['ratio'], 3)}× at {r['dose']}" if r["ratio"] is not None
                                 else f"not scored at {r['dose']}" for r in plain) + ").")
        top = next((r for r in plain if r["gap_target"] is not None), None)
        if top is not None:
            lines.append(f"- Its likelihood gap closed ≥ {100 * GAP_CLOSED_TARGET:.0f} % at {view}@{top['dose']} (thinned "
                         f"counts): {_verdict(top['gap_met'], top['gap_target'], 'no gap')} ({top['model'] or '—'} "
                         f"{_pct(top['gap_closed_thinned'])}).")
    b = t["best_pinn_at_lowest_dose"]
    if b is not None:
        what = f"{b['model']} {_fmt(b['ratio'], 3)}×" if b["ratio"] is not None else "no ratio: a model or LSQML failed"
        lines.append(f"- Best PINN-based model ≥ {BEST_PINN_RATIO_TARGET}× LSQML at {view}@{b['dose']}: "
                     f"{_verdict(b['met'], b['target'])} ({what}).")
    falling = [f"{m['model']} ({m['view']})" for m in t["monotone_in_dose"] if m["monotone"] is False]
    judged = [m for m in t["monotone_in_dose"] if m["monotone"] is not None]
    if judged:
        lines.append("- Every model's phase MS-SSIM rising with the dose: " + (
            "met." if not falling else f"**missed** by {', '.join(falling)}."))
    scored = [r for r in t["seed_spread"] if r["target"] is not None]
    if scored:
        over = [f"{r['model']} at {r['dose']} ({_fmt(r['sd'])})" for r in scored if not r["met"]]
        lines.append(f"- Each plain network's sd over seeds ≤ {SEED_SD_TARGET} on the {view} view: "
                     + ("met." if not over else f"**missed** by {', '.join(over)}."))
    else:
        lines.append(f"- Each plain network's sd over seeds ≤ {SEED_SD_TARGET}: not scored (one training seed: "
                     "the quality profile runs three).")
    return lines


def markdown(summary: dict, phase_g: str = "../phase_g") -> str:
    """The report, answer first; ``phase_g``: the comparisons' folder relative to the report's (its figures)."""
    cols = ("view", "f", "measured overlap", "dose", "detected/pattern", "incident/exposure", "photons/pixel",
            "phase bound (rad)", "model", *TABLE, "shift (dy, dx) px", "ramp (y, x) mrad/px", "registration")
    views = list(dict.fromkeys(c["view"] for c in summary["jobs"]))
    tables = {v: plot_table(summary, "ms_ssim_phase", v) for v in views}
    lines = ["# Study report: PINNs against LSQML across dose and overlap", "",
             "## Findings", "",
             "Phase MS-SSIM on each view's held-out test split (1 = the true object; the best of each column in bold; "
             "mean ± sd over training seeds where several ran). LSQML is pty-chi's iterative solver from a flat object; "
             "the names are defined in the glossary of docs/method.md.", "",
             headline_markdown(tables), "", "Against the study's targets (the next section gives each number):", "",
             *findings(summary), ""]
    for i, (name, caption) in enumerate(FIGURES, 1):
        lines += [f"![Figure {i}]({name})", "", f"*Figure {i}.* {caption}", ""]
    lines += ["Each job's reconstructions beside the truth and their FRC curves are under \"Each job\" below "
              "(embedded in index.html)."]
    lines += _targets_markdown(summary["targets"]) + _unconverged_note(summary.get("lsqml_tuning", []))
    lines += ["", "## How the numbers are made", "", HEADER, "", *_stitching_line(summary["jobs"])]
    lines += ["", "## Per model: mean and best over jobs", "",
              "(Over the table's jobs, each job's number being the mean over its seeds where several ran.)", "",
              "| model | " + " | ".join(f"{k} mean | {k} best (job)" for k, _ in HEADLINE) + " |",
              "|---|" + "---|---|" * len(HEADLINE)]
    for model, stats in summary["per_model"].items():
        lines.append(f"| {model} | " + " | ".join(
            f"{_fmt(stats[k]['mean'])} | {_fmt(stats[k]['best'])} ({stats[k]['best_job'] or '—'})"
            for k, _ in HEADLINE) + " |")
    lines += _networks_markdown(summary.get("networks", []))
    if summary["deltas"]:
        lines += ["", "## Differences between models", "", DELTA_LEGEND]
    for name, d in summary["deltas"].items():
        lines += ["", f"### {name}", "", "| view | dose | " + " | ".join(k for k, _ in HEADLINE) + " |",
                  "|---|---|" + "---|" * len(HEADLINE)]
        for r in d["per_job"]:
            lines.append(f"| {r['view']} | {r['dose']} | " + " | ".join(_fmt_delta(r, k) for k, _ in HEADLINE) + " |")
        lines.append("| **mean** | | " + " | ".join(_fmt(d["mean"][k]) for k, _ in HEADLINE) + " |")
    lines += ["", "## Settings", ""]
    skip = ("seed", "device", "deterministic", "threads", "object_init", "probe_init", "positions")
    for model, variants in summary.get("settings", {}).items():
        for v in variants:
            where = "" if len(variants) == 1 else f" ({', '.join(v['jobs'])})"
            lines.append(f"- **{model}**{where}: " + ", ".join(
                f"{k} ({', '.join(f'{a} {b}' for a, b in x.items())})" if isinstance(x, dict) else f"{k} {x}"
                for k, x in v["settings"].items() if k not in skip))
    lines += ["", "## What each model cost", "",
              "Epochs of training (PtychoPINN, BP-UNet, BP-UNet-gs1: at most train.epochs, fewer where the validation "
              "loss stopped improving; means over seeds), of refining on the test split's counts (<network>+refine: "
              "at most refine.epochs; best epoch 0 = the trained model kept, no epoch lowered the held-out loss; "
              "its training epochs are the network's) or of LSQML (the LSQML model from a flat object; <network>+LSQML from "
              "the network's field: hybrid.epochs, or tune@'s epochs where fewer, after the network's training).", "",
              "| view | dose | model | seeds | epochs run | best epoch | validation loss |", "|---|---|---|---|---|---|---|"]
    for c in summary["jobs"]:
        for model in summary["models"]:
            s = c["models"].get(model, {})
            if s.get("status") == "completed":
                lines.append(f"| {c['view']} | {c['dose']} | {model} | {', '.join(map(str, s.get('seeds', []))) or '—'} | "
                             f"{_fmt(s.get('epochs_run'), 1)} | {_fmt(s.get('best_epoch'), 1)} | "
                             f"{_fmt(s.get('final_val_loss'), 6)} |")
    lines += ["", "## pty-chi runs (phase F)", "",
              "Noise model, total-variation weight, step size and epochs (at most reconstruct.epochs) as "
              "tune@<dose>-<view> chose them on the view's training split (its own truth, never the test split): "
              "`data/phase_f/tune/dose_<d>/<view>/lsqml_tuning.json`.",
              "", "| view | dose | positions | status | epochs | noise model | TV weight | step | final cost |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["ptychi_runs"]:
        status = r["status"] if r["status"] == "completed" else f"failed: {r['error']}"
        st = r.get("settings") or {}
        lines.append(f"| {r['view']} | {r['dose']} | {r['n_positions']} | {status} | {r['epochs_run']} | "
                     f"{st.get('noise_model', '—')} | {_fmt(st.get('tv_weight'))} | {_fmt(st.get('step_size'))} | "
                     f"{_fmt(r['final_cost'], 4)} |")
    lines += _tuning_markdown(summary.get("lsqml_tuning", []))
    if summary["registration_failures"]:
        lines += ["", "## Registration failures", "",
                  "The shift estimate exceeded the bound; these rows are scored without a shift (a wrapped-around "
                  "field would score unseen pixels):", ""]
        lines += [f"- {r['model']} at {r['view']}@{r['dose']}: {r['registration']}"
                  for r in summary["registration_failures"]]
    if summary["failed"]:
        lines += ["", "## Failed", ""] + [f"- {f['model']} at {f['view']}@{f['dose']}: {f['note']}"
                                          for f in summary["failed"]]
    lines += ["", "## Each job: the reconstructions beside the truth, and their FRC", ""]
    for c in summary["jobs"]:
        cell = f"{phase_g}/dose_{c['dose']}/{c['view']}"
        lines += [f"### {c['view']}@{c['dose']}", "",
                  f"![{c['view']}@{c['dose']}: each model's phase and amplitude beside the truth]({cell}/comparison.png)", "",
                  f"![{c['view']}@{c['dose']}: FRC of each model against the truth]({cell}/frc_curves.png)", ""]
    lines += ["## Appendix: every job, every metric", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for c in summary["jobs"]:
        ov = c.get("overlap", {})
        context = (f"| {c['view']} | {_fmt(ov.get('f'), 2)} | {_fmt(ov.get('per_image'), 3)} | {c['dose']} | "
                   f"{c['nphotons']:.0f} | {c['incident_photons_per_exposure']:.0f} | "
                   f"{c['photons_per_pixel_mean']:.3g} | {_fmt(c['shot_noise_phase_bound_rad'])}")
        for model in (m for m in summary["models"] if m in c["models"]):
            s = c["models"][model]
            if s["status"] == "completed":
                vals = [_fmt_sd(s, k) for k in TABLE] + [
                    f"({s['shift_y_px']:.2f}, {s['shift_x_px']:.2f})",
                    f"({1e3 * s['phase_ramp_y_rad_per_px']:.2f}, {1e3 * s['phase_ramp_x_rad_per_px']:.2f})",
                    "ok" if s["registration"] == "ok" else "**failed**, scored unshifted"]
            else:
                vals = [f"failed: {s.get('note', '')}"] + [""] * (len(TABLE) + 2)
            name = f"{model} ({len(s['seeds'])} seeds)" if len(s.get("seeds", [])) > 1 else model
            lines.append(f"{context} | {name} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


DELTA_LEGEND = ("Positive MS-SSIM deltas and negative MAE deltas favour the first model named. Where a model ran several "
                "training seeds, its numbers are means ± the sample sd over seeds, a delta carries ± the combined "
                "spread sqrt(sd_a² + sd_b²) (a +refine or +LSQML model minus its network: the sd "
                "of the per-seed differences, each being made from its seed's network), and * marks a delta larger than "
                "that spread; without a spread (one seed) a delta is not tested.")


def plot_table(summary: dict, metric: str, view: str) -> list[dict]:
    """One plotted metric on one view, as ``plots/<metric>_<view>.csv`` holds it: a row per dose, the
    values as text (nphotons, photons_per_pixel, a column per model, a ``<model>_sd`` column each)."""
    rows = []
    for c in (c for c in summary["jobs"] if c["view"] == view):
        vals = [c["models"].get(m, {}).get(metric) for m in MODELS]
        sds = [c["models"].get(m, {}).get("sd", {}).get(metric) for m in MODELS]
        rows.append(dict(zip(PLOT_COLUMNS, [f"{c['nphotons']:g}", f"{c['photons_per_pixel_mean']:.6g}",
                                            *("" if v is None else f"{v:.6g}" for v in vals + sds)])))
    return rows


PLOT_COLUMNS = ("nphotons", "photons_per_pixel", *MODELS, *(f"{m}_sd" for m in MODELS))


def read_plot_table(path: str | Path) -> list[dict]:
    """A ``plots/<metric>_<view>.csv`` back as :func:`plot_table` made it."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _dose_label(nphotons: str) -> str:
    exponent = math.log10(float(nphotons))
    return f"1e{exponent:.0f}" if exponent == round(exponent) else nphotons


def headline_markdown(tables: dict[str, list[dict]]) -> str:
    """The headline table from :func:`plot_table` rows of ``ms_ssim_phase`` per view: a row per model
    that has a value, a column per (view, dose), the best of each column in bold."""
    columns = [(view, row) for view, rows in tables.items() for row in rows]
    models = [m for m in MODELS if any(row.get(m) for _, row in columns)]
    # the best as shown (three places): models that tie there are all bold
    best = [max((round(float(row[m]), 3) for m in models if row.get(m)), default=None) for _, row in columns]
    lines = ["| model | " + " | ".join(f"{view} {_dose_label(row['nphotons'])}" for view, row in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for m in models:
        cells = []
        for (_, row), top in zip(columns, best):
            if not row.get(m):
                cells.append("—")
                continue
            text = f"{float(row[m]):.3f}" + (f" ± {float(row[m + '_sd']):.3f}" if row.get(f"{m}_sd") else "")
            cells.append(f"**{text}**" if round(float(row[m]), 3) == top else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_plot_tables(folder: Path, summary: dict) -> None:
    """``<metric>_<view>.csv`` for each plotted metric and view (:func:`plot_table`): dvc plots' data."""
    for metric in PLOTTED:
        for view in sorted({c["view"] for c in summary["jobs"]}):
            with atomic_path(folder / f"{metric}_{view}.csv") as tmp:
                with open(tmp, "w", newline="") as fh:
                    w = csv.DictWriter(fh, PLOT_COLUMNS, lineterminator="\n")
                    w.writeheader()
                    w.writerows(plot_table(summary, metric, view))


def timing_markdown(summary: dict, timing: dict) -> str:
    """Wall times per job from the untracked run records: ``timing`` maps (phase, dose, view) to a record."""
    models = [m for m in summary["models"] if m != "LSQML"]
    lines = ["# Wall times (run records, not tracked by DVC)", "",
             "Seconds per job: a trained network's inference and stitching; +refine: refining and inference; +LSQML: "
             "inference and LSQML; LSQML: its LSQML run.", "",
             "| view | dose | " + " | ".join(models) + " | LSQML | host |", "|---|---|" + "---|" * (len(models) + 2)]
    for c in summary["jobs"]:
        g = timing.get(("phase_g", c["dose"], c["view"]), {})
        f = timing.get(("phase_f", c["dose"], c["view"]), {})
        t = g.get("wall_time_s", {})
        lines.append(f"| {c['view']} | {c['dose']} | " + " | ".join(_fmt(t.get(m), 2) for m in models) +
                     f" | {_fmt(f.get('wall_seconds'), 1)} | {(g.get('host') or f.get('host') or {}).get('cpu', '—')} |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, summary: dict, phase_g: str | Path = "data/phase_g") -> None:
    """metrics_summary.json, the tables for dvc plots, the figures, then metrics_summary.md and index.html,
    which link (and embed) them and each job's figures in ``phase_g``."""
    out = Path(out_dir)
    write_json(out / "metrics_summary.json", summary)
    write_plot_tables(out / "plots", summary)
    plot_report(out, summary, summary["models"])
    text = markdown(summary, Path(os.path.relpath(phase_g, out)).as_posix())
    with atomic_path(out / "metrics_summary.md") as tmp:
        tmp.write_text(text)
    write_html(out / "index.html", text)


# README.md's headline table sits between these markers; `make docs` rewrites it from the committed CSVs
README_START = "<!-- headline: make docs writes this table from data/report/plots -->"
README_END = "<!-- end headline -->"


def readme_with_headline(readme: str, plots: str | Path, views=("dense", "sparse")) -> str:
    """``readme`` with its headline table rewritten from ``plots/ms_ssim_phase_<view>.csv``."""
    if README_START not in readme or README_END not in readme:
        raise ContractError(f"the README has no headline markers: put {README_START} and {README_END} where the table goes")
    tables = {v: read_plot_table(Path(plots) / f"ms_ssim_phase_{v}.csv") for v in views
              if (Path(plots) / f"ms_ssim_phase_{v}.csv").is_file()}
    before, rest = readme.split(README_START, 1)
    return before + README_START + "\n" + headline_markdown(tables) + "\n" + README_END + rest.split(README_END, 1)[1]


if __name__ == "__main__":
    import argparse

    from fly64study.cli import run

    def _main(argv=None):
        parser = argparse.ArgumentParser(description="Rewrite README.md's headline table from the report's CSVs.")
        parser.add_argument("--readme", default="README.md")
        parser.add_argument("--plots", default="data/report/plots")
        args = parser.parse_args(argv)
        with atomic_path(Path(args.readme)) as tmp:
            tmp.write_text(readme_with_headline(Path(args.readme).read_text(), args.plots))
        print(f"{args.readme}: headline table from {args.plots}")

    run(_main)
