"""Phase A: validate params.yaml and record the study design in data/design.json.

``--check`` validates only (``make repro`` runs it before ``dvc repro``): DVC reads params.yaml
itself to name the stages, and on some mistakes (an unquoted label such as 1e3) it fails with
a message that does not say which key, or drops stages silently."""
import argparse

from fly64study.cli import run
from fly64study.design import design_record, load_params
from fly64study.files import write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="design JSON to write")
    out.add_argument("--check", action="store_true", help="validate the params file, write nothing")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.check:
        print(f"{args.params}: valid (doses {', '.join(params.design.doses)}; views {', '.join(params.design.views)})")
        return
    write_json(args.out, design_record(params.design))


if __name__ == "__main__":
    run(main)
