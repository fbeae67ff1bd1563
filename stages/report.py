"""Phase G: the study report from every comparison and every pty-chi run.

Writes metrics_summary.json and metrics_summary.md (per job; per model mean and best; the deltas
fly64study.models names; each network's likelihood gap; the targets), plots/*.csv
(dvc plots), the PNGs ms_ssim_vs_dose.png and frc_and_phase_error_vs_fluence.png, and index.html:
the report as one self-contained page for a browser, every figure embedded.
"""
import argparse
from pathlib import Path

from fly64study.cli import run
from fly64study.design import load_params
from fly64study.contract import read_json
from fly64study.files import atomic_path
from fly64study.report import load_tunings, summarise, timing_markdown, write_report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--phase-f", default="data/phase_f",
                        help="dose_<d>/<view>/reconstruction_manifest.json, tune/dose_<d>/<view>/lsqml_tuning.json")
    parser.add_argument("--phase-g", default="data/phase_g", help="dose_<d>/<view>/comparison.json")
    parser.add_argument("--out", default="data/report")
    parser.add_argument("--timing-dir", default="data/timing", help="untracked run records; the timing table goes there")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    doses = params.design.doses
    comparisons = [read_json(Path(args.phase_g) / f"dose_{d}" / v / "comparison.json")
                   for d in doses for v in params.compare.views]
    runs = [job for d in doses for v in params.compare.views
            for job in read_json(Path(args.phase_f) / f"dose_{d}" / v / "reconstruction_manifest.json")["jobs"]]
    tunings = load_tunings(Path(args.phase_f) / "tune", doses, params.compare.views)
    summary = summarise(comparisons, runs, tunings)
    write_report(args.out, summary, args.phase_g)
    timing = {}
    for phase in ("phase_f", "phase_g"):
        for d in doses:
            for v in params.compare.views:
                path = Path(args.timing_dir) / phase / f"{d}-{v}.json"
                if path.is_file():  # absent when DVC restored the stage from its cache instead of running it
                    timing[(phase, d, v)] = read_json(path)
    with atomic_path(Path(args.timing_dir) / "report_timing.md") as tmp:
        tmp.write_text(timing_markdown(summary, timing))
    print(f"report: {Path(args.out) / 'metrics_summary.md'} ({len(comparisons)} comparisons, "
          f"{len(summary['failed'])} failed model runs)")


if __name__ == "__main__":
    run(main)
