"""Phase A: validate params.yaml and record the study design in data/design.json."""
import argparse

from fly64study.cli import run
from fly64study.design import design_record, load_params
from fly64study.files import write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="design JSON to write")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    write_json(args.out, design_record(params.design))


if __name__ == "__main__":
    run(main)
