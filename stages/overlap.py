"""Phase D: the view of one dose's train and test splits, and its overlap metrics.

A view with an overlap fraction keeps a Poisson-disc subset; a view without one (the
baseline) keeps every position, so its files are phase C's splits byte for byte.
"""
import argparse
from pathlib import Path

from fly64study import resources
from fly64study.cli import run
from fly64study.contract import load_dataset, save_dataset
from fly64study.design import ParamsError, load_params
from fly64study.files import write_metrics
from fly64study.overlap import build_view


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--view", required=True, help="view name, a key of design.views (dense, sparse)")
    parser.add_argument("--phase-c", required=True, help="folder holding patched_{train,test}.npz")
    parser.add_argument("--out", required=True, help="output folder, data/phase_d/dose_<label>/<view>")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    design = params.design
    if args.view not in design.views:
        raise ParamsError(f"--view {args.view}: not a key of design.views {list(design.views)}")
    resources.check(f"overlap {args.view} of {args.phase_c}", resources.overlap(args.phase_c), args.out)
    out = Path(args.out)
    metrics = {"overlap_fraction": design.views[args.view]}
    for part in ("train", "test"):
        split = load_dataset(Path(args.phase_c) / f"patched_{part}.npz")
        view, metrics[part] = build_view(
            split,
            view=args.view,
            fraction=design.views[args.view],
            neighbor_count=design.neighbor_count,
            subsampling_seed=design.seeds.subsampling,
            grouping_seed=design.seeds.grouping,
            min_positions=params.overlap.min_positions,
        )
        metrics.update(nphotons=view.metadata["nphotons"], probe_diameter_px=metrics[part].pop("probe_diameter90_px"),
                       spacing_px=metrics[part].pop("spacing_px"))
        save_dataset(out / f"{part}.npz", view)
    write_metrics(out / "metrics.json", metrics)


if __name__ == "__main__":
    run(main)
