"""What every stage command line shares: logging, and clean errors for bad input."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Sequence

from fly64study import numerics
from fly64study.contract import ContractError
from fly64study.design import ParamsError


def run(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> None:
    """Run a stage's ``main``; bad parameters or data end it with one clear line and exit code 2.

    A stage that computes with torch (it is imported by then) runs with pinned torch settings."""
    if "torch" in sys.modules:
        numerics.pin_torch(True)
    # under torchrun every process logs: each line says which
    size = int(os.environ.get("WORLD_SIZE", 1))
    rank = f" [rank {os.environ.get('RANK', '?')}/{size}]" if size > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s{rank} %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        main(argv)
    except (ParamsError, ContractError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
