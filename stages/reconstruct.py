"""Phase F: pty-chi LSQML on one view's test split (object flat, probe known, positions fixed).

Writes ptychi_reconstruction.npz (object, probe, per-epoch cost, wall time), ptychi.log,
reconstruction_manifest.json and skip_summary.json. A pty-chi failure is recorded there (status
"failed", with the reason) and the stage still ends normally, so one failed job does not stop
the study; phase G reports it.
"""
import argparse
import os
from pathlib import Path

from fly64study.cli import run
from fly64study.contract import load_dataset
from fly64study.design import ParamsError, load_params
from fly64study.devices import select_device
from fly64study.files import write_json, write_timing
from fly64study.numerics import pin_torch
from fly64study.iterative import Choice, run_manifest, run_reconstruction


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dose", required=True, help="dose label, a key of design.doses")
    parser.add_argument("--view", required=True, help="view, a key of design.views (the pipeline runs compare.views)")
    parser.add_argument("--phase-d", default="data/phase_d", help="phase D root: dose_<d>/<view>/test.npz")
    parser.add_argument("--out", required=True, help="output folder, data/phase_f/dose_<d>/<view>")
    parser.add_argument("--accelerator", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--tuning", help="lsqml_tuning.json of tune@<dose>-<view>: its chosen noise model, total "
                        "variation and step size (default: Gaussian, none, 1)")
    parser.add_argument("--timing-dir", default="data/timing", help="untracked run records (wall times, host)")
    parser.add_argument("--deterministic", action="store_true",
                        help="one thread and deterministic kernels: the same object bytes every run")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.dose not in params.design.doses:
        raise ParamsError(f"--dose {args.dose}: unknown; choose from {list(params.design.doses)}")
    if args.view not in params.design.views:
        raise ParamsError(f"--view {args.view}: unknown; choose from {list(params.design.views)}")
    device = select_device(args.accelerator).type
    pin_torch(args.deterministic, threads=1)  # LSQML is bitwise reproducible on one thread only
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # pty-chi logs the GPUs it sees: a host detail in a tracked log
    test_path = Path(args.phase_d) / f"dose_{args.dose}" / args.view / "test.npz"
    test = load_dataset(test_path)
    out = Path(args.out)
    choice = Choice.load(args.tuning, args.dose, args.view) if args.tuning else Choice()
    entry, seconds = run_reconstruction(test, params.reconstruct, out_dir=out, dose=args.dose, view=args.view,
                                        test_path=str(test_path), device=device, deterministic=args.deterministic,
                                        choice=choice)
    write_timing(Path(args.timing_dir) / "phase_f" / f"{args.dose}-{args.view}.json",
                 {"dose": args.dose, "view": args.view, "wall_seconds": seconds, "epochs": entry["epochs_run"],
                  "n_positions": test.n})
    write_json(out / "reconstruction_manifest.json", run_manifest([entry], device, args.deterministic))
    skipped = [] if entry["status"] == "completed" else [
        {"dose": args.dose, "view": args.view, "reason": f"pty-chi failed: {entry['error']}"}]
    write_json(out / "skip_summary.json", {"count": len(skipped), "skipped": skipped})
    name = f"{args.view} (dose={args.dose})"
    print(f"{name} → LSQML {entry['status']}: {entry['output']}")
    print(f"{name} → SHA256: {entry['sha256']}")
    print(f"{name} → final cost {entry['final_cost']}", flush=True)


if __name__ == "__main__":
    run(main)
