"""Per-epoch training checkpoints, so an interrupted job resumes where it stopped.

One HDF5 file per job, rewritten atomically after every epoch: the model's and the best epoch's
states, Adam's per-parameter state, the random generators' states, and (as a JSON attribute)
the epoch, the loss history, the early-stopping record and a fingerprint of the job (its data
and settings): a checkpoint of another job or setting is ignored, never resumed. Nothing is
pickled. Restoring every state exactly is what makes a resumed ``--deterministic`` run end with
the same bundle bytes as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import torch

from fly64study.files import atomic_h5

log = logging.getLogger(__name__)

FORMAT = 2  # 2: fused Adam and the float64 input root (a format-1 run resumed would mix numerics)


def _put(group: h5py.Group, state: dict[str, torch.Tensor]) -> None:
    for key in sorted(state):
        group.create_dataset(key, data=state[key].detach().cpu().numpy(), track_times=False)


def _get(group: h5py.Group) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.array(group[key][()])) for key in group}


def save(path: str | Path, *, fingerprint: str, epoch: int, finished: bool, model: torch.nn.Module,
         best_state: dict, optimiser: torch.optim.Optimizer, generators: dict[str, torch.Generator],
         history: list[dict], best: float, best_epoch: int) -> None:
    opt = optimiser.state_dict()
    meta = {"format": FORMAT, "fingerprint": fingerprint, "epoch": epoch, "finished": finished,
            "history": history, "best": best, "best_epoch": best_epoch, "param_groups": opt["param_groups"]}
    with atomic_h5(path, libver="earliest") as h5:
        h5.attrs["meta"] = json.dumps(meta)
        _put(h5.create_group("model"), model.state_dict())
        _put(h5.create_group("best"), best_state)
        group = h5.create_group("optimiser")
        for index, state in opt["state"].items():
            _put(group.create_group(str(index)), state)
        _put(h5.create_group("rng"), {name: g.get_state() for name, g in generators.items()})


def load(path: str | Path, *, fingerprint: str, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
         generators: dict[str, torch.Generator]) -> dict | None:
    """Restore a job's checkpoint into ``model``, ``optimiser`` and ``generators``; return its record
    (epoch, finished, history, best, best_epoch, best_state), or None when there is none to resume."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as h5:
            meta = json.loads(h5.attrs["meta"])
            if meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
                log.warning("%s: a checkpoint of other data or settings; starting afresh", path)
                return None
            model.load_state_dict(_get(h5["model"]))
            best_state = _get(h5["best"])
            optimiser.load_state_dict({"state": {int(k): _get(h5["optimiser"][k]) for k in h5["optimiser"]},
                                       "param_groups": meta["param_groups"]})
            for name, state in _get(h5["rng"]).items():
                generators[name].set_state(state)
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        # atomic writes never leave a partial file: this one was altered; never resume from it
        raise ValueError(f"{path}: unreadable training checkpoint ({err}); delete it to train the job afresh") from None
    return {**{k: meta[k] for k in ("epoch", "finished", "history", "best", "best_epoch")}, "best_state": best_state}
