"""Data-parallel training under `torchrun`: the process group, and which process writes.

`torchrun --nproc_per_node=K [--nnodes=M ...] stages/train.py ...` starts K·M copies of the
stage with WORLD_SIZE, RANK and LOCAL_RANK set. Each copy trains on its share of every batch
(:func:`fly64study.train.train_model`: a DistributedSampler and DistributedDataParallel, which
averages the gradients), and rank 0 alone writes bundles, tables and manifests. Without
torchrun the world is one process and training is the single-process code, bit for bit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from fly64study.design import ParamsError


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_size: int = 1  # processes on this node: they share its cores (or its GPUs)

    @property
    def writes(self) -> bool:
        """Whether this process writes outputs (rank 0; every process logs)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place, from torchrun's variables (none: a world of one)."""
    env = os.environ
    return World(size=int(env.get("WORLD_SIZE", 1)), rank=int(env.get("RANK", 0)),
                 local_rank=int(env.get("LOCAL_RANK", 0)), local_size=int(env.get("LOCAL_WORLD_SIZE", 1)))


def start(w: World, device: torch.device) -> torch.device:
    """Join the process group (gloo on the CPU, nccl on CUDA: one GPU per local rank); returns the
    device this process trains on."""
    if not w.distributed:
        return device
    if device.type == "cuda":
        if torch.cuda.device_count() < w.local_size:
            raise ParamsError(f"torchrun --nproc_per_node={w.local_size}: only {torch.cuda.device_count()} "
                              "CUDA devices here; start at most one process per GPU")
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
    # ranks other than 0 wait in the next collective while rank 0 evaluates and writes a bundle:
    # minutes at the full profile, beyond NCCL's default 10-minute timeout
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return device


def stop(w: World) -> None:
    if w.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _tensor(values: list[float]) -> torch.Tensor:
    nccl = torch.distributed.get_backend() == "nccl"  # it reduces GPU tensors only
    return torch.tensor(values, dtype=torch.float64, device="cuda" if nccl else "cpu")


def all_sum(values: list[float], w: World) -> list[float]:
    """Every process's ``values`` summed, on every process (float64; unchanged in a world of one)."""
    if not w.distributed:
        return values
    t = _tensor(values)
    torch.distributed.all_reduce(t)
    return t.tolist()


def from_rank0(value: float, w: World) -> float:
    """Rank 0's ``value`` on every process: decisions (early stopping, the learning rate) stay in step."""
    if not w.distributed:
        return value
    t = _tensor([value])
    torch.distributed.broadcast(t, 0)
    return float(t.item())
