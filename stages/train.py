"""Phase E: train a PINN network (--network: BP-UNet, or the published PtychoPINN) for each (dose, job),
write content-hashed bundles and the manifests.

After each job three lines name the job and its dose, for example
    dense (dose=1e3) → Bundle: dose_1e3/dense/gs2/wts.h5.zip
    dense (dose=1e3) → SHA256: <64 hex>
    dense (dose=1e3) → Size: <bytes> bytes
for the first seed of train.seeds, and three more per further seed, naming it:
    dense (dose=1e3), seed 8 → Bundle: dose_1e3/dense/gs2/seed_8/wts.h5.zip
with the same values as training_manifest.json (bundle paths relative to --artifact-root). Another
network than the default (BP-UNet) is named in each line: `dense (dose=1e3, ptychopinn) → Bundle: ...`.

Data-parallel on K processes, unchanged: `torchrun --nproc_per_node=K stages/train.py ...`
(gloo on the CPU, nccl with --accelerator cuda; add --nnodes and a rendezvous for several
machines). Rank 0 writes; every rank logs; the manifest records the world size.
"""
import argparse
from pathlib import Path

from fly64study.cli import run
from fly64study.design import DEFAULT_NETWORK, NETWORKS, ParamsError, load_params
from fly64study.files import write_json
from fly64study.devices import select_device
from fly64study.distributed import start, stop, world
from fly64study.numerics import pin_torch, record
from fly64study.train import TrainingPaused, plan_jobs, run_job


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--phase-d", default="data/phase_d", help="phase D root: dose_<d>/<view>/{train,test}.npz")
    parser.add_argument("--artifact-root", default="data/phase_e", help="bundles go to <root>/dose_<d>/<view>/gs<g>/ "
                        "(further seeds of train.seeds: .../gs<g>/seed_<s>/)")
    parser.add_argument("--manifest-dir", help="where training_manifest.json, skip_summary.json and each job's "
                        "eval_<d>_<view>.json and losses_<d>_<view>.csv go (default: the artifact root)")
    parser.add_argument("--network", choices=NETWORKS, default=DEFAULT_NETWORK,
                        help=f"which network to train: its settings are train.<network> (default: {DEFAULT_NETWORK})")
    parser.add_argument("--dose", action="append", help="only this dose label (repeatable)")
    parser.add_argument("--view", action="append", help="only this job / view (repeatable)")
    parser.add_argument("--accelerator", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic algorithms: same inputs give a byte-identical bundle")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--allow-missing", action="store_true",
                        help="skip a job whose data is missing (recorded in skip_summary.json) instead of failing")
    parser.add_argument("--timing-dir", default="data/timing", help="untracked run records (wall times, host)")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs and their paths; train nothing")
    parser.add_argument("--checkpoint-dir", help="per-epoch checkpoints, resumed when a job is run again "
                        "(default: <artifact-root>/.checkpoints; removed once a job's bundle is written)")
    parser.add_argument("--stop-after-epoch", type=int, help="pause each job after this epoch (its checkpoint "
                        "resumes it on the next run): for time-boxed runs")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    jobs = plan_jobs(params, args.dose, args.view, args.network)
    phase_d, root = Path(args.phase_d), Path(args.artifact_root)
    manifest_dir = Path(args.manifest_dir) if args.manifest_dir else root
    w = world()
    if args.dry_run and not w.writes:
        return
    if args.dry_run:
        for job in jobs:
            train_path, test_path = job.data_paths(phase_d)
            for i, seed in enumerate(params.train.seeds):
                extra = seed if i else None
                print(f"{job.seed_name(extra)} gs{job.gridsize}: {train_path}, {test_path} → "
                      f"{root / job.relative_dir(extra) / 'wts.h5.zip'}")
        return
    if args.num_workers < 0:
        raise ParamsError("--num-workers: must be >= 0")
    if args.stop_after_epoch is not None and args.stop_after_epoch < 1:
        raise ParamsError("--stop-after-epoch: must be >= 1")
    if w.distributed and args.stop_after_epoch is not None:
        raise ParamsError("--stop-after-epoch: a torchrun (distributed) run keeps no checkpoint to resume; "
                          "run it in one process")
    device = start(w, select_device(args.accelerator))
    # every rank runs numerics.THREADS threads, as one process does: oneDNN splits its sums by the
    # thread count, so a node's ranks share its cores rather than split the threads
    pin_torch(args.deterministic)
    try:
        train_jobs(args, params, jobs, phase_d, root, manifest_dir, device, w)
    finally:
        stop(w)


def train_jobs(args, params, jobs, phase_d, root, manifest_dir, device, w):
    entries, skipped = [], []
    for job in jobs:
        missing = [str(p) for p in job.data_paths(phase_d) if not p.is_file()]
        if missing:
            reason = f"phase D view missing: {', '.join(missing)}"
            if not args.allow_missing:
                raise ParamsError(f"{job.name}: {reason}; run `dvc repro` first, or pass --allow-missing to skip it")
            skipped.append({"dose": job.dose, "view": job.view, "gridsize": job.gridsize, "reason": reason})
            print(f"{job.name} → skipped: {reason}")
            continue
        try:
            job_entries = run_job(job, params, phase_d=phase_d, artifact_root=root, records=manifest_dir, device=device,
                                  num_workers=args.num_workers, checkpoint_dir=args.checkpoint_dir,
                                  stop_after_epoch=args.stop_after_epoch, timing_dir=Path(args.timing_dir), world=w)
        except TrainingPaused as paused:
            skipped.append({"dose": job.dose, "view": job.view, "gridsize": job.gridsize, "reason": str(paused)})
            print(f"{job.name} → {paused}", flush=True)
            continue
        entries += job_entries
        for i, entry in enumerate(job_entries):
            name = job.seed_name(entry["seed"] if i else None)
            print(f"{name} → Bundle: {entry['bundle_path']}")
            print(f"{name} → SHA256: {entry['sha256']}")
            print(f"{name} → Size: {entry['size']} bytes", flush=True)
    if not w.writes:
        return
    # no timestamp or host here: a tracked output changes only when results do (times: --timing-dir)
    write_json(manifest_dir / "training_manifest.json", {
        "artifact_root": str(root), "phase_d_root": str(phase_d),
        "network": args.network, "filters": {"dose": args.dose or [], "view": args.view or []},
        "options": {"accelerator": args.accelerator, "device": str(device), "deterministic": args.deterministic,
                    "num_workers": args.num_workers, "allow_missing": args.allow_missing,
                    "world_size": w.size},  # torchrun's processes (bits are reproducible for a fixed one)
        # bit for bit on any x86-64 CPU only on the CPU with --deterministic and pinned numerics
        "bitwise_reproducible": device.type == "cpu" and args.deterministic and record()["pinned"],
        "numerics": record(),
        "jobs": entries,
    })
    write_json(manifest_dir / "skip_summary.json", {"count": len(skipped), "skipped": skipped})


if __name__ == "__main__":
    run(main)
