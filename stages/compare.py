"""Phase G: PtychoPINN, PtychoPINN+refine, PtychoPINN+LSQML, Baseline and PtyChi on one view's test
split, against the truth.

PtychoPINN = the view's own bundles, PtychoPINN+refine = the same fitted further to the test split's
counts (refine@<dose>-<view>), Baseline = the dose's compare.baseline (gridsize 1) bundles, one per
training seed, each loaded through the verified loader against the SHA256 in its training manifest
and scored on its own (comparison.json gives the mean and sd over seeds); PtychoPINN+LSQML = LSQML
started from each PtychoPINN bundle (hybrid@<dose>-<view>, each file checked against its manifest,
which must name those very bundles); PtyChi = phase F's reconstruction of the same patterns. Writes
comparison_metrics.csv (tidy: dose, view, model, seed, alignment, metric, amplitude, phase, value,
note), frc_curves.csv, comparison.json, comparison.png and frc_curves.png, and every reconstruction as
a Ptychodus product in products/ (fly64study.products: <model>[_seed<s>].h5, positions in metres from
the phase C geometry); the wall times (PINN inference; PtychoPINN+refine: refining and inference,
PtychoPINN+LSQML: inference and LSQML, where refine@'s and hybrid@'s run records are there) go to an
untracked run record, <timing-dir>/phase_g/<dose>-<view>.json (data/timing/ by default), not into
DVC-tracked files.
"""
import argparse
from pathlib import Path

from fly64study.bundle import BundleError
from fly64study.cli import run
from fly64study.compare import Candidate, compare, write_comparison
from fly64study.contract import ContractError, load_dataset, read_json
from fly64study.design import ParamsError, load_params
from fly64study.files import write_timing
from fly64study.hybrid import load_runs
from fly64study.inference import REFINE_MANIFEST, TRAINING_MANIFEST, pinn_field, trained_bundles
from fly64study.iterative import RESULT_FILE, load_result
from fly64study.products import seed_suffix, write_products
from fly64study.train import read_loss_column


def _seconds(record: Path, *parts: str) -> dict[str, float]:
    """Output SHA256 -> its wall time (the sum of ``parts``), from a refine@ or hybrid@ untracked run
    record. Keyed by the output file: a record of another run (DVC restored the stage from its cache,
    or the params went back) names other files, and that row's wall time is then unknown."""
    try:
        return {t["sha256"]: sum(float(t[p]) for p in parts) for t in read_json(record)["seeds"]}
    except (ContractError, KeyError, TypeError, ValueError):
        return {}


def _lsqml_candidate(model: str, rec, note: str, seed: int | None = None, seconds: float | None = None) -> Candidate:
    """An LSQML reconstruction (PtyChi, or a PtychoPINN+LSQML seed) as a candidate; a failed run stays a row."""
    done = rec.status == "completed"
    return Candidate(model, rec.object if done else None, seconds if done else None,
                     note if done else f"pty-chi failed: {rec.error}", seed=seed,
                     cost={"epochs_run": int(rec.cost.size)}, settings=rec.settings,
                     losses=tuple((i + 1, float(c)) for i, c in enumerate(rec.cost)),
                     loss_name="LSQML cost per epoch", probe=rec.probe if done else None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dose", required=True)
    parser.add_argument("--view", required=True, help="a view of compare.views")
    parser.add_argument("--phase-d", default="data/phase_d")
    parser.add_argument("--phase-e", default="data/phase_e",
                        help="bundle root (dose_<d>/<job>/gs<g>/wts.h5.zip, further seeds in gs<g>/seed_<s>/)")
    parser.add_argument("--runs", default="data/phase_e/runs", help="training manifests: <d>-<job>/training_manifest.json")
    parser.add_argument("--refine", default="data/refine", help="refined bundles' root (phase E's layout)")
    parser.add_argument("--refine-runs", default="data/refine/runs", help="<d>-<view>/refine_manifest.json")
    parser.add_argument("--phase-f", default="data/phase_f")
    parser.add_argument("--hybrid", default="data/hybrid", help="hybrid@'s root: dose_<d>/<view>/hybrid_manifest.json")
    parser.add_argument("--out", required=True, help="output folder, data/phase_g/dose_<d>/<view>")
    parser.add_argument("--timing-dir", default="data/timing", help="untracked run records (wall times)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    design, jobs = params.design, params.train.jobs
    if args.dose not in design.doses:
        raise ParamsError(f"--dose {args.dose}: unknown; choose from {list(design.doses)}")
    if args.view not in params.compare.views:
        raise ParamsError(f"--view {args.view}: not in compare.views {list(params.compare.views)}")
    view_dir = Path(args.phase_d) / f"dose_{args.dose}" / args.view
    test = load_dataset(view_dir / "test.npz")
    overlap = read_json(view_dir / "metrics.json")
    candidates = []
    refine_seconds = _seconds(Path(args.timing_dir) / "refine" / f"{args.dose}-{args.view}.json", "refine_seconds")
    sources = (("PtychoPINN", args.view, args.runs, args.phase_e, TRAINING_MANIFEST),
               ("PtychoPINN+refine", args.view, args.refine_runs, args.refine, REFINE_MANIFEST),
               ("Baseline", params.compare.baseline, args.runs, args.phase_e, TRAINING_MANIFEST))
    firsts = {}  # model -> its first seed (whose product and loss columns carry no seed suffix)
    bundles, fields = {}, {}  # model -> its bundles; PtychoPINN's seed -> its field (hybrid@'s start)
    for model, job, runs, root, manifest in sources:
        losses = Path(runs) / f"{args.dose}-{job}" / f"losses_{args.dose}_{job}.csv"
        bundles[model] = trained_bundles(Path(runs), Path(root), args.dose, job, jobs[job], manifest)
        for b in bundles[model]:
            first = firsts.setdefault(model, b.seed)
            try:
                pinn = pinn_field(b.path, test, neighbor_count=design.neighbor_count,
                                  grouping_seed=design.seeds.grouping, expected_sha256=b.sha256)
            except BundleError as err:
                raise ContractError(str(err)) from None
            if model == "PtychoPINN":
                fields[b.seed] = pinn.field
            seconds = pinn.seconds
            if model == "PtychoPINN+refine":
                seconds = seconds + refine_seconds[b.sha256] if b.sha256 in refine_seconds else None
            candidates.append(Candidate(model, pinn.field, seconds, f"{job} gs{pinn.gridsize} bundle {b.sha256[:12]}",
                                        seed=b.seed, cost=b.training, settings=b.settings,
                                        losses=read_loss_column(losses, "val_loss" + seed_suffix(b.seed, first)),
                                        loss_name="held-out Poisson NLL per epoch (epoch 0: before refining)"
                                        if model == "PtychoPINN+refine" else "validation Poisson NLL per epoch"))
    hybrid_seconds = _seconds(Path(args.timing_dir) / "hybrid" / f"{args.dose}-{args.view}.json",
                              "pinn_seconds", "lsqml_seconds")
    for e, rec in load_runs(Path(args.hybrid) / f"dose_{args.dose}" / args.view, bundles["PtychoPINN"], fields):
        firsts.setdefault("PtychoPINN+LSQML", e["seed"])
        candidates.append(_lsqml_candidate("PtychoPINN+LSQML", rec, seed=e["seed"], seconds=hybrid_seconds.get(e["sha256"]),
                                           note=f"LSQML {rec.settings.get('epochs')} epochs from PtychoPINN bundle "
                                                f"{e['bundle_sha256'][:12]}"))
    rec = load_result(Path(args.phase_f) / f"dose_{args.dose}" / args.view / RESULT_FILE)
    candidates.append(_lsqml_candidate("PtyChi", rec, note=f"LSQML {rec.settings.get('epochs')} epochs"))
    measured = {"f": overlap.get("overlap_fraction"), "spacing_px": overlap.get("spacing_px"),
                "probe_diameter_px": overlap.get("probe_diameter_px"),
                "per_image": overlap.get("test", {}).get("overlap_per_image")}
    result = compare(test, candidates, dose=args.dose, view=args.view, cfg=design.metrics, overlap=measured)
    write_comparison(args.out, result)
    write_products(Path(args.out) / "products", test, candidates, dose=args.dose, view=args.view,
                   probe_photon_count=result.summary["incident_photons_per_exposure"], firsts=firsts)
    write_timing(Path(args.timing_dir) / "phase_g" / f"{args.dose}-{args.view}.json",
                 {"dose": args.dose, "view": args.view, "wall_time_s": result.timing})
    for model, m in result.summary["models"].items():
        if m["status"] == "completed":
            seconds = result.timing.get(model)
            sd = m.get("sd", {}).get("ms_ssim_phase")
            spread = "" if sd is None else f" ± {sd:.3f} over {len(m['seeds'])} seeds"
            print(f"{args.view} (dose={args.dose}) {model}: MS-SSIM phase {m['ms_ssim_phase']:.3f}{spread} "
                  f"(fixed frame {m['fixed_frame_ms_ssim_phase']:.3f}) amplitude {m['ms_ssim_amplitude']:.3f}, "
                  f"MAE phase {m['mae_phase']:.4f} rad, FRC0.5 phase {m['frc_resolution_phase']:.3f} cyc/px, "
                  f"registration {m['registration']}" + (f", {seconds:.1f} s" if seconds is not None else ""))
        else:
            print(f"{args.view} (dose={args.dose}) {model}: {m['note']}")


if __name__ == "__main__":
    run(main)
