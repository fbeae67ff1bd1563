"""Where torch work runs: shared by the training and reconstruction stages (how reproducibly: numerics)."""
from __future__ import annotations

import torch

from fly64study.design import ParamsError


def select_device(accelerator: str) -> torch.device:
    """``cpu``, ``cuda`` (an error if none is there) or ``auto`` (cuda when available)."""
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise ParamsError("--accelerator cuda: no CUDA device is visible; use --accelerator cpu or auto")
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(accelerator)

