"""<network>+refine for one (dose, view): the view's trained bundles of each network of refine.networks,
one per training seed, fitted a few more epochs to the view's test split's own counts (never its truth;
fly64study.refine).

Writes the refined bundles under --out (<out>/dose_<d>/<view>/<network>/gs<g>/wts.h5.zip, further
seeds in gs<g>/seed_<s>/), refine_manifest.json (phase E's entry fields, plus the network, the
validation loss before refining and the source bundle's SHA256) and losses_<d>_<view>.csv (every
network's and seed's columns) under --runs; the wall times go to the untracked
<timing-dir>/refine/<dose>-<view>.json. Prints, per network and seed,
    dense (dose=1e3) refined → SHA256: <64 hex>
"""
import argparse
from pathlib import Path

from fly64study.cli import run
from fly64study.design import ParamsError, load_params
from fly64study.devices import select_device
from fly64study.files import write_json, write_timing
from fly64study.numerics import pin_torch, record
from fly64study.inference import REFINE_MANIFEST, trained_roots, training_manifest
from fly64study.refine import refine_job
from fly64study.train import plan_jobs, write_loss_table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dose", required=True)
    parser.add_argument("--view", required=True, help="a view of compare.views (its training job is refined)")
    parser.add_argument("--phase-d", default="data/phase_d")
    parser.add_argument("--trained", action="append", metavar="NETWORK=ROOT", default=[],
                        help="a network's trained bundles (its manifests in ROOT/runs/<d>-<job>/), one per network of "
                             "refine.networks (repeatable; default bp_unet=data/phase_e, ptychopinn=data/ptychopinn)")
    parser.add_argument("--out", required=True, help="refined bundles' root, data/refine")
    parser.add_argument("--runs", required=True, help="this run's manifest folder, data/refine/runs/<d>-<view>")
    parser.add_argument("--accelerator", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--deterministic", action="store_true", help="same inputs give byte-identical bundles")
    parser.add_argument("--timing-dir", default="data/timing", help="untracked run records (wall times)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.view not in params.compare.views:
        raise ParamsError(f"--view {args.view}: not in compare.views {list(params.compare.views)}")
    roots = trained_roots(args.trained)
    device = select_device(args.accelerator)
    pin_torch(args.deterministic)
    entries, timing, histories = [], [], {}
    for network in params.refine.networks:
        (job,) = plan_jobs(params, [args.dose], [args.view], network)
        e, t, h = refine_job(job, params, phase_d=Path(args.phase_d), trained_root=roots[network],
                             manifest=training_manifest(roots[network], args.dose, args.view),
                             artifact_root=Path(args.out), device=device)
        entries, timing, histories = entries + e, timing + t, {**histories, **h}
    (Path(args.out) / f"dose_{args.dose}" / args.view).mkdir(parents=True, exist_ok=True)  # a DVC output, even empty
    write_loss_table(Path(args.runs) / f"losses_{args.dose}_{args.view}.csv", histories, first_epoch=0)
    write_json(Path(args.runs) / REFINE_MANIFEST, {
        "artifact_root": args.out, "source_roots": {n: str(roots[n]) for n in params.refine.networks},
        "options": {"accelerator": args.accelerator, "device": str(device), "deterministic": args.deterministic},
        "bitwise_reproducible": device.type == "cpu" and args.deterministic and record()["pinned"],
        "numerics": record(), "jobs": entries,
    })
    write_timing(Path(args.timing_dir) / "refine" / f"{args.dose}-{args.view}.json",
                 {"dose": args.dose, "view": args.view, "seeds": timing})
    for e in entries:
        job = plan_jobs(params, [args.dose], [args.view], e["network"])[0]
        name = job.seed_name(None if e["seed"] == params.train.seeds[0] else e["seed"])
        print(f"{name} refined → best epoch {e['best_epoch']} of {e['epochs']} (held-out loss "
              f"{e['start_val_loss']:.6g} → {e['final_val_loss']:.6g})")
        print(f"{name} refined → SHA256: {e['sha256']}", flush=True)


if __name__ == "__main__":
    run(main)
