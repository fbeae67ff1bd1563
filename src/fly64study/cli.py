"""What every stage command line shares: logging, and clean errors for bad input and for a
machine that lacks the memory or disk space a stage needs."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Sequence

from fly64study import numerics
from fly64study.contract import ContractError
from fly64study.design import ParamsError
from fly64study.files import DiskFullError, is_disk_full


class ResourceError(RuntimeError):
    """The machine lacks the memory or disk space a stage will need (fly64study.resources): said
    before the stage starts."""


def run(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> None:
    """Run a stage's ``main``; bad parameters or data, too little memory or a full disk end it
    with one clear line and exit code 2 (no traceback: the line says what to do).

    A stage that computes with torch (it is imported by then) runs with pinned torch settings."""
    if "torch" in sys.modules:
        numerics.pin_torch(True)
    # under torchrun every process logs: each line says which
    size = int(os.environ.get("WORLD_SIZE", 1))
    rank = f" [rank {os.environ.get('RANK', '?')}/{size}]" if size > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s{rank} %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        main(argv)
    except (ParamsError, ContractError, ResourceError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if not is_disk_full(err):
            raise
        # an atomic write names the output that did not fit (files.DiskFullError); another write, its file
        message = str(err) if isinstance(err, DiskFullError) else (
            f"{err.filename or 'a write'}: disk full ({err.strerror}); free space, then rerun the same command")
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
