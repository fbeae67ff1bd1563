"""Phase C: simulate one dose of the study and write its train/test splits and an overview plot."""
import argparse
from pathlib import Path

from fly64study import resources
from fly64study.cli import run
from fly64study.contract import save_dataset
from fly64study.design import ParamsError, load_params
from fly64study.plots import plot_phase_c
from fly64study.simulate import generate_dose


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dose", required=True, help="dose label, a key of design.doses (e.g. 1e3)")
    parser.add_argument("--out", required=True, help="output folder, data/phase_c/dose_<label>")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.dose not in params.design.doses:
        raise ParamsError(f"--dose {args.dose}: not a key of design.doses {list(params.design.doses)}")
    resources.check(f"generate@{args.dose}", resources.generate(params), args.out)
    train, test = generate_dose(params.design, params.generate, args.dose)
    out = Path(args.out)
    save_dataset(out / "patched_train.npz", train)
    save_dataset(out / "patched_test.npz", test)
    plot_phase_c(out / "overview.png", train, test)


if __name__ == "__main__":
    run(main)
