"""<network>+refine: a trained network fitted a few more epochs to the test split's own patterns.

Only the measured counts are read, never the truth: the loss is the training's Poisson
likelihood with its count-thinning split (the network sees a binomial share of each pattern and
is scored on the independent rest, so it cannot fit the noise of what it reconstructs), and it
stops on the validation loss of held-out test positions. The trained network is epoch 0: a
refinement that never lowers that loss returns it unchanged. Inference afterwards sees the full
counts, as the plain model's does.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from fly64study.bundle import BundleError, load_inference_model, write_bundle
from fly64study.contract import ContractError, load_dataset
from fly64study.design import Params
from fly64study.inference import trained_bundles
from fly64study.products import seed_suffix
from fly64study.train import Job, Schedule, train_model

log = logging.getLogger(__name__)

def schedule(params: Params) -> Schedule:
    """The refinement's settings: ``refine.*``, with training's batch size, held-out share and
    thinning; one group per test position and a constant learning rate."""
    r, t = params.refine, params.train
    return Schedule(epochs=r.epochs, batch_size=t.batch_size, learning_rate=r.learning_rate, n_groups=0,
                    val_fraction=t.val_fraction, patience=r.patience, lr_patience=0, thinning=t.thinning)


def loss_columns(network: str, seed: int, first_seed: int, networks: tuple[str, ...]) -> str:
    """The column suffix of a network's seed in a refinement's loss table: the first network of
    ``networks`` (refine.networks) has the plain columns for its first seed (what ``dvc plots``
    draws), others ``_<network>``, further seeds ``_seed<s>``."""
    return ("" if network == networks[0] else f"_{network}") + seed_suffix(seed, first_seed)


def refine_job(job: Job, params: Params, *, phase_d: Path, manifest: Path, trained_root: Path, artifact_root: Path,
               device: torch.device) -> tuple[list[dict], list[dict], dict[str, list[dict]]]:
    """Refine each seed's bundle of ``job`` (its network's, listed in ``manifest`` under
    ``trained_root``) on the job's test split; write the refined bundles under ``artifact_root`` at
    ``dose_<d>/<view>/<network>/gs<g>/...``. Returns one manifest entry and one timing record per
    seed, and the per-epoch losses keyed by their :func:`loss_columns` suffix."""
    design, cfg = params.design, schedule(params)
    test_path = job.data_paths(phase_d)[1]
    test = load_dataset(test_path)
    entries, histories, timing = [], {}, []
    first = params.train.seeds[0]
    for b in trained_bundles(manifest, trained_root, job.dose, job.view, job.gridsize, job.network):
        try:
            net = load_inference_model(b.path, b.sha256)
        except BundleError as err:
            raise ContractError(str(err)) from None
        label = f"{job.seed_name(None if b.seed == first else b.seed)} refine"
        t0 = time.perf_counter()
        result = train_model(test, gridsize=job.gridsize, cfg=cfg, seed=b.seed, neighbor_count=design.neighbor_count,
                             grouping_seed=design.seeds.grouping, device=device, label=label, init=net,
                             fixed_split=True)
        seconds = time.perf_counter() - t0
        view_dir = Path(f"dose_{job.dose}") / job.view
        rel = view_dir / job.network / Path(b.path).relative_to(Path(trained_root) / view_dir)
        refine = {"epochs": cfg.epochs, "learning_rate": cfg.learning_rate, "patience": cfg.patience,
                  "thinning": cfg.thinning, "val_fraction": cfg.val_fraction, "batch_size": cfg.batch_size}
        sha = write_bundle(Path(artifact_root) / rel, result.model, dose=design.doses[job.dose], dose_label=job.dose,
                           extra={"view": job.view, "network": job.network, "refined_from": b.sha256,
                                  "training": {**b.settings, "seed": b.seed}, "refine": refine})
        # epoch 0 first: the loss curve shows where refining started
        histories[loss_columns(job.network, b.seed, first, params.refine.networks)] = [{"epoch": 0, "train_loss": None, "val_loss": result.start_val_loss, "lr": None},
                             *result.history]
        best_val = result.history[result.best_epoch - 1]["val_loss"] if result.best_epoch else result.start_val_loss
        entries.append({
            "dose": job.dose, "nphotons": design.doses[job.dose], "view": job.view, "gridsize": job.gridsize,
            "network": job.network, "seed": b.seed, "test_data": str(test_path), "refined_from": b.sha256,
            "artifact_dir": str(rel.parent), "bundle_path": str(rel), "sha256": sha,
            "size": (Path(artifact_root) / rel).stat().st_size,
            "start_val_loss": result.start_val_loss, "final_val_loss": best_val,
            "epochs": len(result.history), "best_epoch": result.best_epoch,
            "settings": {**b.settings, "refine": refine}, "status": "completed",
        })
        timing.append({"seed": b.seed, "sha256": sha, "refine_seconds": seconds,
                       "epoch_seconds": [h["seconds"] for h in result.history]})
        log.info("%s: best epoch %d of %d (validation loss %.6g, from %.6g), %.1f s", label, result.best_epoch,
                 len(result.history), best_val, result.start_val_loss, seconds)
    return entries, timing, histories
