"""<network>+LSQML for one (dose, view): LSQML started from each of the view's trained models of every
network of hybrid.networks (one per training seed), on the view's test split, with tune@<dose>-<view>'s
settings for hybrid.epochs (fly64study.hybrid; the counts only, never the truth).

Writes <out>/<network>/seed_<s>/ptychi_reconstruction.npz and ptychi.log per network and seed, and
<out>/hybrid_manifest.json (phase F's entry fields plus the network, the seed, the source bundle's
SHA256 and the start field's). A pty-chi
failure is recorded there (status "failed") and the stage still ends normally; phase G reports it.
The wall times (inference, LSQML) go to the untracked <timing-dir>/hybrid/<dose>-<view>.json.
"""
import argparse
import os
from pathlib import Path

from fly64study.cli import run
from fly64study.contract import load_dataset
from fly64study.design import ParamsError, load_params
from fly64study.devices import select_device
from fly64study.files import write_json, write_timing
from fly64study.hybrid import MANIFEST, run_hybrid, start_fields
from fly64study.inference import trained_bundles, trained_roots, training_manifest
from fly64study.models import model_of
from fly64study.iterative import Choice, run_manifest
from fly64study.numerics import pin_torch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dose", required=True, help="dose label, a key of design.doses")
    parser.add_argument("--view", required=True, help="a view of compare.views (its training job's models start LSQML)")
    parser.add_argument("--phase-d", default="data/phase_d", help="phase D root: dose_<d>/<view>/test.npz")
    parser.add_argument("--trained", action="append", metavar="NETWORK=ROOT", default=[],
                        help="a network's trained bundles (its manifests in ROOT/runs/<d>-<job>/), one per network of "
                             "hybrid.networks (repeatable; default bp_unet=data/phase_e, ptychopinn=data/ptychopinn)")
    parser.add_argument("--tuning", required=True, help="lsqml_tuning.json of tune@<dose>-<view>: LSQML's settings")
    parser.add_argument("--out", required=True, help="output folder, data/hybrid/dose_<d>/<view>")
    parser.add_argument("--accelerator", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--timing-dir", default="data/timing", help="untracked run records (wall times, host)")
    parser.add_argument("--deterministic", action="store_true",
                        help="one thread and deterministic kernels: the same object bytes every run")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.dose not in params.design.doses:
        raise ParamsError(f"--dose {args.dose}: unknown; choose from {list(params.design.doses)}")
    if args.view not in params.compare.views:
        raise ParamsError(f"--view {args.view}: not in compare.views {list(params.compare.views)}")
    device = select_device(args.accelerator).type
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # pty-chi logs the GPUs it sees: a host detail in a tracked log
    test_path = Path(args.phase_d) / f"dose_{args.dose}" / args.view / "test.npz"
    test = load_dataset(test_path)
    roots = trained_roots(args.trained)
    # the networks' fields first, pinned as compare@ infers them: compare@ checks they are its fields
    starts = {}
    for network in params.hybrid.networks:
        bundles = trained_bundles(training_manifest(roots[network], args.dose, args.view), roots[network], args.dose, args.view, params.train.jobs[args.view], network)
        starts[network] = start_fields(test, bundles, params, device)
    pin_torch(args.deterministic, threads=1)  # LSQML is bitwise reproducible on one thread only
    out = Path(args.out)
    choice = Choice.load(args.tuning, args.dose, args.view)
    entries, timing = [], []
    for network, network_starts in starts.items():
        e, t = run_hybrid(test, network_starts, params, choice, network=network, out_dir=out, dose=args.dose,
                          view=args.view, test_path=str(test_path), device=device, deterministic=args.deterministic)
        entries, timing = entries + e, timing + t
    write_json(out / MANIFEST, run_manifest(entries, device, args.deterministic))
    write_timing(Path(args.timing_dir) / "hybrid" / f"{args.dose}-{args.view}.json",
                 {"dose": args.dose, "view": args.view, "seeds": timing})
    for e in entries:
        name = f"{args.view} (dose={args.dose}) seed {e['seed']}"
        print(f"{name} → {model_of(e['network'], 'hybrid').name} {e['status']}: {e['output']}, "
              f"final cost {e['final_cost']}")
        print(f"{name} → SHA256: {e['sha256']}", flush=True)


if __name__ == "__main__":
    run(main)
