"""PtychoPINN+refine for one (dose, view): the view's trained bundles, one per training seed, fitted a
few more epochs to the view's test split's own counts (never its truth; fly64study.refine).

Writes the refined bundles in phase E's layout under --out (<out>/dose_<d>/<view>/gs<g>/wts.h5.zip,
further seeds in gs<g>/seed_<s>/), refine_manifest.json (phase E's entry fields, plus the validation
loss before refining and the source bundle's SHA256) and losses_<d>_<view>.csv under --runs; the
wall times go to the untracked <timing-dir>/refine/<dose>-<view>.json. Prints, per seed,
    dense (dose=1e3) refined → SHA256: <64 hex>
"""
import argparse
from pathlib import Path

from fly64study.cli import run
from fly64study.design import ParamsError, load_params
from fly64study.devices import select_device
from fly64study.files import write_json, write_timing
from fly64study.numerics import pin_torch, record
from fly64study.inference import REFINE_MANIFEST
from fly64study.refine import refine_job
from fly64study.train import plan_jobs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dose", required=True)
    parser.add_argument("--view", required=True, help="a view of compare.views (its training job is refined)")
    parser.add_argument("--phase-d", default="data/phase_d")
    parser.add_argument("--phase-e", default="data/phase_e", help="the trained bundles' root")
    parser.add_argument("--train-runs", default="data/phase_e/runs", help="training manifests: <d>-<job>/training_manifest.json")
    parser.add_argument("--out", required=True, help="refined bundles' root, data/refine")
    parser.add_argument("--runs", required=True, help="this run's manifest folder, data/refine/runs/<d>-<view>")
    parser.add_argument("--accelerator", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--deterministic", action="store_true", help="same inputs give byte-identical bundles")
    parser.add_argument("--timing-dir", default="data/timing", help="untracked run records (wall times)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.view not in params.compare.views:
        raise ParamsError(f"--view {args.view}: not in compare.views {list(params.compare.views)}")
    (job,) = plan_jobs(params, [args.dose], [args.view])
    device = select_device(args.accelerator)
    pin_torch(args.deterministic)
    entries, timing = refine_job(job, params, phase_d=Path(args.phase_d), runs=Path(args.train_runs),
                                 phase_e=Path(args.phase_e), artifact_root=Path(args.out), records=Path(args.runs),
                                 device=device)
    write_json(Path(args.runs) / REFINE_MANIFEST, {
        "artifact_root": args.out, "source_root": args.phase_e,
        "options": {"accelerator": args.accelerator, "device": str(device), "deterministic": args.deterministic},
        "bitwise_reproducible": device.type == "cpu" and args.deterministic and record()["pinned"],
        "numerics": record(), "jobs": entries,
    })
    write_timing(Path(args.timing_dir) / "refine" / f"{args.dose}-{args.view}.json",
                 {"dose": args.dose, "view": args.view, "seeds": timing})
    for i, e in enumerate(entries):
        name = job.seed_name(e["seed"] if i else None)
        print(f"{name} refined → best epoch {e['best_epoch']} of {e['epochs']} (held-out loss "
              f"{e['start_val_loss']:.6g} → {e['final_val_loss']:.6g})")
        print(f"{name} refined → SHA256: {e['sha256']}", flush=True)


if __name__ == "__main__":
    run(main)
