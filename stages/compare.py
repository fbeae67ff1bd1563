"""Phase G: every model of fly64study.models on one view's test split, against the truth.

PtychoPINN and BP-UNet = the view's own bundles of the two networks (their training stages' roots,
--trained), <network>+refine = the same fitted further to the test split's counts (refine@<dose>-<view>,
the networks of refine.networks), BP-UNet-gs1 = the dose's compare.baseline (gridsize 1) BP-UNet
bundles, each loaded through the verified loader against the SHA256 in its training manifest and
scored per training seed (comparison.json gives the mean and sd over seeds); <network>+LSQML = LSQML
started from each of that network's bundles (hybrid@<dose>-<view>, the networks of hybrid.networks,
each file checked against its manifest, which must name those very bundles); LSQML = phase F's
reconstruction of the same patterns. Writes comparison_metrics.csv (tidy: dose, view, model, seed,
alignment, metric, amplitude, phase, value, note), frc_curves.csv, comparison.json, comparison.png and
frc_curves.png, and every reconstruction as a Ptychodus product in products/ (fly64study.products:
<stem>[_seed<s>].h5, positions in metres from the phase C geometry); the wall times (PINN inference;
+refine: refining and inference, +LSQML: inference and LSQML, where refine@'s and hybrid@'s run
records are there) go to an untracked run record, <timing-dir>/phase_g/<dose>-<view>.json
(data/timing/ by default), not into DVC-tracked files.
"""
import argparse
from pathlib import Path

from fly64study.bundle import BundleError
from fly64study.cli import run
from fly64study.compare import Candidate, compare, write_comparison
from fly64study.contract import ContractError, load_dataset, read_json
from fly64study.design import DEFAULT_NETWORK, NETWORKS, ParamsError, load_params
from fly64study.files import write_timing
from fly64study.hybrid import load_runs
from fly64study.inference import REFINE_MANIFEST, pinn_field, trained_bundles, trained_roots, training_manifest
from fly64study.models import BY_NAME, model_of
from fly64study.refine import loss_columns
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
    """An LSQML reconstruction (LSQML, or a <network>+LSQML seed) as a candidate; a failed run stays a row."""
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
    parser.add_argument("--trained", action="append", metavar="NETWORK=ROOT", default=[],
                        help="a network's trained bundles: ROOT/dose_<d>/<job>/gs<g>/wts.h5.zip (further seeds in "
                             "gs<g>/seed_<s>/), manifests and losses in ROOT/runs/<d>-<job>/ (repeatable; default "
                             "bp_unet=data/phase_e, ptychopinn=data/ptychopinn)")
    parser.add_argument("--refine", default="data/refine", help="refined bundles' root: dose_<d>/<view>/<network>/gs<g>/")
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
    roots = trained_roots(args.trained)
    refine_seconds = _seconds(Path(args.timing_dir) / "refine" / f"{args.dose}-{args.view}.json", "refine_seconds")
    refine_runs = Path(args.refine_runs) / f"{args.dose}-{args.view}"
    refine_losses = refine_runs / f"losses_{args.dose}_{args.view}.csv"

    def trained(network: str, job: str) -> tuple:
        manifest = training_manifest(roots[network], args.dose, job)
        return (manifest, roots[network], job, network, manifest.parent / f"losses_{args.dose}_{job}.csv",
                lambda seed, first: "val_loss" + seed_suffix(seed, first))

    # model -> (manifest, bundle root, job, network, loss table, its column of a seed)
    sources = {model_of(n, "trained").name: trained(n, args.view) for n in NETWORKS}
    sources |= {model_of(n, "refined").name: (refine_runs / REFINE_MANIFEST, Path(args.refine), args.view, n,
                                              refine_losses, lambda seed, first, n=n: "val_loss" + loss_columns(
                                                  n, seed, first, params.refine.networks))
                for n in params.refine.networks}
    sources["BP-UNet-gs1"] = trained(DEFAULT_NETWORK, params.compare.baseline)  # train@'s gridsize-1 job
    firsts = {}  # model -> its first seed (whose product and loss columns carry no seed suffix)
    bundles, fields = {}, {}  # model -> its bundles; (network, seed) -> a trained model's field (hybrid@'s start)
    for model, (manifest, root, job, network, losses, column) in sources.items():
        kind = BY_NAME[model].kind
        bundles[model] = trained_bundles(manifest, root, args.dose, job, jobs[job], network)
        for b in bundles[model]:
            first = firsts.setdefault(model, b.seed)
            try:
                pinn = pinn_field(b.path, test, neighbor_count=design.neighbor_count,
                                  grouping_seed=design.seeds.grouping, expected_sha256=b.sha256,
                                  stitching=params.compare.stitching,
                                  synchronise=params.compare.synchronise_phases)
            except BundleError as err:
                raise ContractError(str(err)) from None
            if kind == "trained":
                fields[network, b.seed] = pinn.field
            seconds = pinn.seconds
            if kind == "refined":
                seconds = seconds + refine_seconds[b.sha256] if b.sha256 in refine_seconds else None
            candidates.append(Candidate(model, pinn.field, seconds, f"{job} gs{pinn.gridsize} bundle {b.sha256[:12]}",
                                        seed=b.seed, cost=b.training, settings=b.settings,
                                        losses=read_loss_column(losses, column(b.seed, first)),
                                        loss_name="held-out Poisson NLL per epoch (epoch 0: before refining)"
                                        if kind == "refined" else "validation Poisson NLL per epoch"))
    hybrid_seconds = _seconds(Path(args.timing_dir) / "hybrid" / f"{args.dose}-{args.view}.json",
                              "pinn_seconds", "lsqml_seconds")
    for network in params.hybrid.networks:
        model, source = model_of(network, "hybrid").name, model_of(network, "trained").name
        for e, rec in load_runs(Path(args.hybrid) / f"dose_{args.dose}" / args.view, network, bundles[source],
                                {seed: f for (n, seed), f in fields.items() if n == network}):
            firsts.setdefault(model, e["seed"])
            candidates.append(_lsqml_candidate(model, rec, seed=e["seed"], seconds=hybrid_seconds.get(e["sha256"]),
                                               note=f"LSQML {rec.settings.get('epochs')} epochs from {source} bundle "
                                                    f"{e['bundle_sha256'][:12]}"))
    rec = load_result(Path(args.phase_f) / f"dose_{args.dose}" / args.view / RESULT_FILE)
    candidates.append(_lsqml_candidate("LSQML", rec, note=f"LSQML {rec.settings.get('epochs')} epochs"))
    measured = {"f": overlap.get("overlap_fraction"), "spacing_px": overlap.get("spacing_px"),
                "probe_diameter_px": overlap.get("probe_diameter_px"),
                "per_image": overlap.get("test", {}).get("overlap_per_image")}
    result = compare(test, candidates, dose=args.dose, view=args.view, cfg=design.metrics, overlap=measured,
                     stitching={"method": params.compare.stitching,
                                "synchronise_phases": params.compare.synchronise_phases})
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
