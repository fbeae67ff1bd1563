"""Phase E: training a PINN network on one dataset, reconstructing with it, and the job matrix.

A job is (dose, view, gridsize, network): ``baseline`` trains gridsize 1 on the phase C split (its
view keeps every position), ``dense`` and ``sparse`` train gridsize 2 on those phase D views; the
network is the published PtychoPINN or the study's BP-UNet (:mod:`fly64study.networks`).
Training is unsupervised (Poisson NLL through the known probe) and stops on the loss of a held-out
compact block of the training split's positions, whose groups are formed inside it and so are as
tight as the training groups. The ground truth is used only afterwards: the training split's, for
the likelihood gap (:mod:`fly64study.likelihood`), and the held-out test split's, to evaluate
against a flat object.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm import tqdm

from fly64study import checkpoint, metrics
from fly64study.bundle import write_bundle
from fly64study.contract import ContractError, Dataset, load_dataset
from fly64study.design import DEFAULT_NETWORK, Params, ParamsError, Train
from fly64study.distributed import World, all_sum, from_rank0
from fly64study.files import atomic_path, sha256_file, write_metrics, write_timing
from fly64study.grouped import Groups, counts_of, inference_chunks, make_groups, thin, thinned_amplitude
from fly64study.likelihood import gap_closed, likelihood_gap
from fly64study.model import poisson_nll
from fly64study.models import model_of
from fly64study.networks import Autoencoder, network_config
from fly64study.overlap import block_split, cover_positions, group_positions, member_distances
from fly64study.plots import plot_losses
from fly64study.products import seed_suffix

log = logging.getLogger(__name__)

_BETTER = 1e-3  # a validation loss is better when it is this share of the best's excess over a perfect fit lower
_LR_FACTOR = 0.5  # the learning rate's cut on a plateau (train.lr_patience)


# ------------------------------------------------------------------------------ the jobs
@dataclass(frozen=True)
class Job:
    dose: str  # label, a key of design.doses
    view: str  # a key of design.views
    gridsize: int
    network: str = DEFAULT_NETWORK  # a key of fly64study.networks.NETWORKS

    @property
    def name(self) -> str:
        """``dense (dose=1e3)``; another network than the default says which: ``dense (dose=1e3, ptychopinn)``."""
        extra = "" if self.network == DEFAULT_NETWORK else f", {self.network}"
        return f"{self.view} (dose={self.dose}{extra})"

    def data_paths(self, phase_d: Path) -> tuple[Path, Path]:
        """(train, test) NPZ files of the job's phase D view (the baseline's: phase C's splits)."""
        folder = Path(phase_d) / f"dose_{self.dose}" / self.view
        return folder / "train.npz", folder / "test.npz"

    def relative_dir(self, extra_seed: int | None = None) -> Path:
        """Where the job's model lives, relative to the artifact root: the first seed of
        ``train.seeds`` at ``dose_<d>/<view>/gs<g>/`` (the study's layout, unchanged by adding
        seeds), each further seed in ``seed_<s>/`` below it."""
        folder = Path(f"dose_{self.dose}") / self.view / f"gs{self.gridsize}"
        return folder if extra_seed is None else folder / f"seed_{extra_seed}"

    @property
    def tag(self) -> str:
        """``<dose>-<view>``, and ``-<network>`` for another network than the default: file names."""
        return f"{self.dose}-{self.view}" + ("" if self.network == DEFAULT_NETWORK else f"-{self.network}")

    def seed_name(self, extra_seed: int | None = None) -> str:
        """How the command line names the job's model of a seed (the first seed: the job's name)."""
        return self.name if extra_seed is None else f"{self.name}, seed {extra_seed}"


def plan_jobs(params: Params, doses: list[str] | None = None, views: list[str] | None = None,
              network: str = DEFAULT_NETWORK) -> list[Job]:
    """Every (dose, job) of the params for ``network``, filtered by dose labels and job/view names when given.

    Only the jobs asked for are looked up, so a stage that trains one job reads that job's
    gridsize alone (and lists only that key in dvc.yaml)."""
    for label, wanted, known in (("--dose", doses, params.design.doses), ("--view", views, params.train.jobs)):
        for w in wanted or []:
            if w not in known:
                raise ParamsError(f"{label} {w}: unknown; choose from {sorted(dict.keys(known))}")
    # labels in params order; dict.keys lists them without reading (recording) any value
    doses = [d for d in dict.keys(params.design.doses) if not doses or d in doses]
    views = [v for v in dict.keys(params.train.jobs) if not views or v in views]
    return [Job(dose=d, view=v, gridsize=params.train.jobs[v], network=network) for d in doses for v in views]


# ------------------------------------------------------------------------------ training
@dataclass
class TrainResult:
    model: Autoencoder
    history: list[dict]  # per epoch: epoch, train_loss, val_loss, seconds
    best_epoch: int  # 0: the starting network (``init``) was never improved on
    start_val_loss: float | None = None  # the validation loss of ``init`` before any step
    geometry: dict | None = None  # training and validation groups' sizes and member distances


def batch_loss(model: Autoencoder, amp: torch.Tensor, counts: torch.Tensor, offsets: torch.Tensor,
               thinning: float, generator: torch.Generator | None,
               split: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Poisson NLL of one batch of groups; amp, counts (B, C, N, N), offsets (B, C, 2).

    With ``thinning`` p > 0 each count is split binomially into an input share (fraction p) and
    an independent target share (the rest), so the network cannot fit the very noise it is
    scored on: it learns a denoised object, not one that reproduces shot noise. ``split``: that
    (input, target) pair drawn beforehand, instead of a new draw.
    """
    s = getattr(model, "module", model).cfg.intensity_scale  # ``model`` may be its DistributedDataParallel
    if thinning <= 0:
        return model(amp, offsets, counts)[2]
    seen, target = split if split is not None else thin(counts, thinning, generator)
    _, predicted, _ = model(thinned_amplitude(seen, thinning, s), offsets)
    return poisson_nll(predicted, target, s * math.sqrt(1.0 - thinning))


def make_optimiser(model: torch.nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    """Adam, fused: the for-loop Adam takes its square roots with float32 torch.sqrt, whose bits
    differ between CPUs (see :func:`batch_loss`). Part of the numerics: benchmarks build theirs here."""
    return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True)


def _loss_over(model: Autoencoder, amp: torch.Tensor, counts: torch.Tensor, groups: Groups, thinning: float,
               seed: int) -> float:
    """Mean loss over groups; the same thinning draws every call (a fixed validation set)."""
    generator = torch.Generator(device=amp.device).manual_seed(seed)
    total, n = 0.0, 0
    with torch.no_grad():
        for chunk in inference_chunks(groups.offsets, amp.shape[-1]):
            idx = groups.indices[chunk]
            off = groups.offsets[chunk].to(amp.device)
            loss = batch_loss(model, amp[idx], counts[idx], off, thinning, generator)
            total += float(loss) * len(idx)
            n += len(idx)
    return total / n


def _saturated_over(counts: torch.Tensor, groups: Groups, thinning: float, seed: int) -> float:
    """The validation loss a perfect fit would have (predicted = target counts), for the same draws as
    :func:`_loss_over`: the floor the loss approaches. The loss drops log(counts!), so its level
    moves with the dose (0.12 at 1e3 photons, -44 at 1e5); its distance to this floor does not."""
    generator = torch.Generator(device=counts.device).manual_seed(seed)
    total, n = 0.0, 0
    for chunk in inference_chunks(groups.offsets, counts.shape[-1]):
        idx = groups.indices[chunk]
        _, target = thin(counts[idx], thinning, generator)
        total += float((target - target * torch.log(target + 1e-6)).mean()) * len(idx)
        n += len(idx)
    return total / n


@dataclass(frozen=True)
class Schedule:
    """What :func:`train_model` reads of its settings when it continues a trained network (``init``):
    the network's shape comes from that network. (A :class:`~fly64study.design.Train` has these too.)"""

    epochs: int
    batch_size: int
    learning_rate: float
    n_groups: int
    val_fraction: float
    patience: int
    lr_patience: int
    thinning: float


class TrainingPaused(Exception):
    """Training stopped after the epoch asked for (``stop_after_epoch``); its checkpoint resumes it."""


def train_model(ds: Dataset, *, gridsize: int, cfg: Train | Schedule, seed: int, neighbor_count: int,
                grouping_seed: int, device: torch.device, network: str = DEFAULT_NETWORK, num_workers: int = 0,
                label: str = "", checkpoint_path: Path | None = None, fingerprint: str = "",
                stop_after_epoch: int | None = None, init: torch.nn.Module | None = None,
                fixed_split: bool = False, world: World = World()) -> TrainResult:
    """Train ``network`` (its settings: ``cfg.<network>``) on ``ds`` (unsupervised) with early stopping
    on a held-out validation loss; ``seed`` sets the initialisation, the validation block, the batch
    order and the thinning draws.

    The validation positions are one compact block of the split (``overlap.block_split``: the
    ``val_fraction`` of the positions nearest a seeded position), and its groups are formed inside
    it, so they are as tight as the training groups: the loss that picks the epoch sees the overlap
    (groups drawn among scattered held-out positions would not overlap). Both groups' member
    distances are returned in ``geometry``.

    With ``init`` (a trained network) training continues from it, keeping its shape (``network`` and
    ``cfg``'s network settings are not read), and the starting network is epoch 0: it is returned when no
    epoch improves on its validation loss (such a run keeps no checkpoint). With ``fixed_split`` the thinning split of each pattern
    is drawn once, not every epoch: over epochs, fresh splits of the same patterns would reveal
    their full counts, so a network fitting the patterns it reconstructs could learn their noise.

    With ``checkpoint_path`` every epoch ends by rewriting the checkpoint (atomically), and a
    checkpoint with the same ``fingerprint`` found at the start is resumed from; with
    ``stop_after_epoch`` training pauses (:class:`TrainingPaused`) once that epoch is saved.

    In a ``world`` of K processes (torchrun, :mod:`fly64study.distributed`) each process takes a
    DistributedSampler's share of the groups, in batches of ``batch_size / K`` (the step still sees
    ``batch_size`` groups), with its own thinning draws; DistributedDataParallel averages the
    gradients, so every process holds the same weights, and early stopping follows rank 0's
    validation loss. Deterministic for a fixed K, not equal to another K's bits; keeps no checkpoint.
    """
    if (init is not None or fixed_split) and checkpoint_path is not None:
        raise ValueError("train_model: init and fixed_split runs keep no checkpoint (a resume would redraw the split)")
    if world.distributed and (init is not None or fixed_split or checkpoint_path is not None):
        raise ValueError("train_model: a distributed run trains from scratch and keeps no checkpoint")
    if cfg.batch_size % world.size:
        raise ParamsError(f"train.batch_size: {cfg.batch_size} groups do not split over {world.size} processes; "
                          f"make it a multiple of torchrun's world size {world.size}")
    torch.manual_seed(seed)
    n_min = gridsize * gridsize
    train_pos, val_pos = block_split(ds.xcoords, ds.ycoords, cfg.val_fraction, seed)
    if min(len(train_pos), len(val_pos)) < n_min:
        raise ParamsError(
            f"{label}: {ds.n} positions leave {len(train_pos)} for training and {len(val_pos)} for validation; "
            f"gridsize {gridsize} needs at least {n_min} in each (scan more positions or raise train.val_fraction)"
        )
    amp = torch.from_numpy(ds.diffraction).to(device)  # (n, N, N), indexed by group members
    counts = counts_of(ds).to(device)

    def groups_of(pos: np.ndarray, n_groups: int | None) -> Groups:
        g = make_groups(ds.xcoords[pos], ds.ycoords[pos], gridsize=gridsize, neighbor_count=neighbor_count,
                        seed=grouping_seed, n_groups=n_groups)
        return Groups(indices=torch.from_numpy(pos)[g.indices], offsets=g.offsets)

    # n_groups applies to gridsize > 1 (oversampling needs neighbours); gridsize 1 sees each position once
    train_groups = groups_of(train_pos, (cfg.n_groups or None) if gridsize > 1 else None)
    val_groups = groups_of(val_pos, None)
    geometry = {"train": member_distances(train_groups.offsets.numpy()), "validation": member_distances(
        val_groups.offsets.numpy())}
    if init is None:
        model_cfg = network_config(ds.N, gridsize, float(ds.metadata["intensity_scale"]), network,
                                   cfg.network(network))
        model = Autoencoder(model_cfg, torch.from_numpy(ds.probeGuess))
    else:
        model = Autoencoder(init.cfg, init.probe)
        model.net.load_state_dict(init.state_dict())
    model = model.to(device)
    optimiser = make_optimiser(model, cfg.learning_rate)
    order = torch.Generator().manual_seed(seed)
    # each process its own thinning draws (rank 0's are a single process's)
    thinning_draws = torch.Generator(device=device).manual_seed(seed + 1 + 1_000_003 * world.rank)
    groups = TensorDataset(train_groups.indices, train_groups.offsets)
    sampler, step_model = None, model
    if world.distributed:
        sampler = DistributedSampler(groups, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed)
        loader = DataLoader(groups, batch_size=cfg.batch_size // world.size, sampler=sampler, num_workers=num_workers)
        # starts from rank 0's weights; one GPU per process on CUDA
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        loader = DataLoader(groups, batch_size=cfg.batch_size, shuffle=True, generator=order, num_workers=num_workers)
    log.info("%s: %d training groups of %d, %d validation groups (members %s / %s px apart), %d parameters, on %s",
             label, len(train_groups.indices), gridsize**2, len(val_groups.indices),
             geometry["train"]["mean_member_distance_px"], geometry["validation"]["mean_member_distance_px"],
             sum(p.numel() for p in model.parameters()), device)
    floor = _saturated_over(counts, val_groups, cfg.thinning, seed + 2)
    history, best, best_state, best_epoch, start, finished = [], float("inf"), None, 0, 1, False
    start_val_loss = None
    if init is not None:  # epoch 0: what the trained network scores before any step
        model.eval()
        best = start_val_loss = _loss_over(model, amp, counts, val_groups, cfg.thinning, seed + 2)
        best_state = copy.deepcopy(model.state_dict())
        log.info("%s: validation loss %.6g before any step", label, best)
    generators = {"order": order, "thinning": thinning_draws}
    if checkpoint_path is not None:
        resumed = checkpoint.load(checkpoint_path, fingerprint=fingerprint, model=model, optimiser=optimiser,
                                  generators=generators)
        if resumed is not None:
            history, best, best_epoch = resumed["history"], resumed["best"], resumed["best_epoch"]
            best_state, finished, start = resumed["best_state"], resumed["finished"], resumed["epoch"] + 1
            log.info("%s: resuming after epoch %d from %s", label, resumed["epoch"], checkpoint_path)
    fixed = thin(counts, cfg.thinning, thinning_draws) if fixed_split and cfg.thinning > 0 else None
    for epoch in range(start, cfg.epochs + 1):
        if finished:
            break
        t0 = time.perf_counter()
        model.train()
        if sampler is not None:
            sampler.set_epoch(epoch)
        total, seen = 0.0, 0
        for idx, off in tqdm(loader, desc=f"{label} epoch {epoch}", unit="batch", leave=False, disable=None):
            loss = batch_loss(step_model, amp[idx], counts[idx], off.to(device), cfg.thinning, thinning_draws,
                              None if fixed is None else (fixed[0][idx], fixed[1][idx]))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            # the Poisson loss's gradient grows with the counts: clip, or a bright batch blows up the net
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        total, seen = all_sum([total, seen], world)
        model.eval()
        val = from_rank0(_loss_over(model, amp, counts, val_groups, cfg.thinning, seed + 2), world)
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch, "train_loss": total / seen, "val_loss": val,
                        "lr": optimiser.param_groups[0]["lr"], "seconds": seconds})
        log.info("%s epoch %d/%d: loss %.6g, validation loss %.6g, %.1f s", label, epoch, cfg.epochs,
                 total / seen, val, seconds)
        if best_state is None or val < best - _BETTER * max(best - floor, 0.0):
            best, best_epoch, best_state = val, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= cfg.patience:
            log.info("%s: early stop, no better validation loss for %d epochs (best: epoch %d)", label,
                     cfg.patience, best_epoch)
            finished = True
        elif cfg.lr_patience and (epoch - best_epoch) % cfg.lr_patience == 0:
            # a plateau: smaller steps (the learning rate lives in the optimiser, so checkpoints keep it)
            for group in optimiser.param_groups:
                group["lr"] *= _LR_FACTOR
            log.info("%s: learning rate %.3g after %d epochs without a better validation loss", label,
                     optimiser.param_groups[0]["lr"], epoch - best_epoch)
        if checkpoint_path is not None:
            checkpoint.save(checkpoint_path, fingerprint=fingerprint, epoch=epoch, finished=finished or epoch == cfg.epochs,
                            model=model, best_state=best_state, optimiser=optimiser, generators=generators,
                            history=history, best=best, best_epoch=best_epoch)
        if finished:
            break
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.epochs:
            raise TrainingPaused(f"{label}: paused after epoch {epoch} of {cfg.epochs}; checkpoint {checkpoint_path}")
    model.load_state_dict(best_state)
    return TrainResult(model=model.cpu(), history=history, best_epoch=best_epoch, start_val_loss=start_val_loss,
                       geometry=geometry)


# --------------------------------------------------------------------------- inference
def reconstruct_patches(net: torch.nn.Module, ds: Dataset, *, neighbor_count: int, grouping_seed: int,
                        device: torch.device | str = "cpu") -> np.ndarray:
    """The network's object patch at every position of ``ds``, (n, N, N) complex64.

    The positions are covered by about n / C groups (:func:`fly64study.overlap.cover_positions`),
    and every member's patch is kept once: each group is reconstructed jointly, so all of its
    members already carry the shared overlap.
    """
    groups, keep = cover_positions(ds.xcoords, ds.ycoords, gridsize=net.cfg.gridsize, neighbor_count=neighbor_count,
                                   seed=grouping_seed)
    patches = _infer(net, ds, groups.indices, groups.offsets, device)
    out = np.empty((ds.n, ds.N, ds.N), dtype=np.complex64)
    out[groups.indices[keep]] = patches[keep]
    return out


def every_group_patches(net: torch.nn.Module, ds: Dataset, *, neighbor_count: int, grouping_seed: int,
                        device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Upstream's reassembly: a group seeded at every position (as training forms them), every member's
    patch of every group kept. Returns the patches (G·C, N, N) and the position of each, (G·C,)."""
    groups = group_positions(ds.xcoords, ds.ycoords, gridsize=net.cfg.gridsize, neighbor_count=neighbor_count,
                             seed=grouping_seed)
    patches = _infer(net, ds, groups.indices, groups.offsets, device)
    return patches.reshape(-1, ds.N, ds.N), groups.indices.reshape(-1)


def _infer(net: torch.nn.Module, ds: Dataset, indices: np.ndarray, offsets: np.ndarray,
           device: torch.device | str) -> np.ndarray:
    """Every group's patches, (G, C, N, N) complex64, in no-grad chunks of one canvas each."""
    indices, offsets = torch.from_numpy(indices), torch.from_numpy(offsets.astype(np.float32))
    amp = torch.from_numpy(ds.diffraction)
    out = np.empty((*indices.shape, ds.N, ds.N), dtype=np.complex64)
    net = net.to(device).eval()
    with torch.no_grad():
        for chunk in inference_chunks(offsets, ds.N):
            out[chunk.numpy()] = net(amp[indices[chunk]].to(device), offsets[chunk].to(device)).cpu().numpy()
    return out


def evaluate(net: torch.nn.Module, test: Dataset, *, neighbor_count: int, grouping_seed: int,
             device: torch.device | str = "cpu") -> dict:
    """Errors on the held-out split against the ground-truth patches ``Y``, beside a flat object's."""
    if test.Y is None:
        return {"status": "no ground truth (Y) in the test split"}
    pred = reconstruct_patches(net, test, neighbor_count=neighbor_count, grouping_seed=grouping_seed, device=device)
    out = metrics.patch_errors(pred, test.Y, test.probeGuess)
    out["beats_flat_phase"] = out["phase_rmse_rad"] < out["flat_phase_rmse_rad"]
    return out


# --------------------------------------------------------------------------------- a job
def write_loss_table(path: Path, histories: dict[str, list[dict]], first_epoch: int = 1) -> None:
    """One row per epoch: train_loss, val_loss, learning_rate of each history, its columns named with
    its key as a suffix (the first model's: "", what ``dvc plots`` draws; a further seed's: ``_seed<s>``),
    empty after it stopped or where a value is None; every history's first row is epoch ``first_epoch``."""
    # no history (nothing refined): the plain header alone, so the table's columns are always there
    columns = [(suffix, key) for suffix in (histories or [""]) for key in ("train_loss", "val_loss", "lr")]
    header = ["epoch"] + [("learning_rate" if key == "lr" else key) + suffix for suffix, key in columns]
    rows = []
    for i in range(max((len(h) for h in histories.values()), default=0)):
        cells = [str(first_epoch + i)]
        for suffix, key in columns:
            history = histories[suffix]
            value = history[i][key] if i < len(history) else None
            cells.append("" if value is None else f"{value:.9g}")
        rows.append(",".join(cells) + "\n")
    with atomic_path(path) as tmp:
        tmp.write_text(",".join(header) + "\n" + "".join(rows))


def read_loss_column(path: str | Path, column: str) -> tuple[tuple[int, float], ...]:
    """(epoch, value) of one column of a :func:`write_loss_table` file, empty cells skipped."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and column not in rows[0]:
        raise ContractError(f"{path}: no column {column!r}; it has {list(rows[0])}")
    return tuple((int(r["epoch"]), float(r[column])) for r in rows if r[column] != "")


def job_fingerprint(job: Job, params: Params, train_path: Path, seed: int) -> str:
    """What a checkpoint must match to be resumed: the training data's bytes and every setting used."""
    settings = {"job": [job.dose, job.view, job.gridsize, job.network], "seed": seed,
                "train": training_settings(params.train, job.network),
                "neighbor_count": params.design.neighbor_count, "grouping_seed": params.design.seeds.grouping,
                "data_sha256": sha256_file(train_path)}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


RECIPE = ("batch_size", "learning_rate", "epochs", "patience", "lr_patience", "thinning", "n_groups", "val_fraction")


def training_settings(cfg: Train, network: str) -> dict:
    """What a model was trained with: the network, its own settings (``train.<network>``) and the recipe."""
    own = cfg.network(network)
    return {"network": network, **{f.name: getattr(own, f.name) for f in dataclasses.fields(own)},
            **{k: getattr(cfg, k) for k in RECIPE}}


def run_job(job: Job, params: Params, *, phase_d: Path, artifact_root: Path, records: Path,
            device: torch.device, num_workers: int = 0, checkpoint_dir: Path | None = None,
            stop_after_epoch: int | None = None, timing_dir: Path | None = None,
            world: World = World()) -> list[dict]:
    """Train one job, one model per seed of ``train.seeds``; write each model's bundle under
    ``artifact_root`` (:meth:`Job.relative_dir`: ``dose_<d>/<view>/gs<g>/wts.h5.zip`` for the first
    seed, ``.../gs<g>/seed_<s>/wts.h5.zip`` for each further one), and the per-epoch losses
    (``losses_<dose>_<view>.csv`` and ``.png``, every seed) and the evaluation
    (``eval_<dose>_<view>.json``, per seed: the test split's errors and the training split's
    likelihood gap) under ``records``; wall times go to the untracked
    ``<timing_dir>/phase_e/<job tag>.json`` only, so tracked files hold results alone. Each
    seed's checkpoint (``checkpoint_dir``, default ``<artifact_root>/.checkpoints``) is resumed
    if present and removed once every seed's bundle is written. Returns one manifest entry per seed.

    In a distributed ``world`` every process trains (keeping no checkpoint) and rank 0 alone
    evaluates and writes; the others return no entries."""
    train_path, test_path = job.data_paths(phase_d)
    design, cfg = params.design, params.train
    train_ds, test_ds = load_dataset(train_path), load_dataset(test_path)
    entries, histories, evaluations, gaps, timing = [], {}, {}, {}, []
    checkpoints = []
    for seed in cfg.seeds:
        extra = None if seed == cfg.seeds[0] else seed
        label = job.seed_name(extra)
        ckpt = Path(checkpoint_dir or Path(artifact_root) / ".checkpoints") / \
            f"{job.tag}-gs{job.gridsize}{'' if extra is None else f'-seed{seed}'}.h5"
        checkpoints.append(ckpt)
        t0 = time.perf_counter()
        result = train_model(train_ds, gridsize=job.gridsize, cfg=cfg, seed=seed,
                             neighbor_count=design.neighbor_count, grouping_seed=design.seeds.grouping,
                             device=device, network=job.network, num_workers=num_workers, label=label,
                             checkpoint_path=None if world.distributed else ckpt,
                             fingerprint=job_fingerprint(job, params, train_path, seed),
                             stop_after_epoch=stop_after_epoch, world=world)
        train_seconds = time.perf_counter() - t0
        if not world.writes:
            continue
        bundle_rel = job.relative_dir(extra) / "wts.h5.zip"
        training = {"epochs_run": len(result.history), "best_epoch": result.best_epoch, "seed": seed,
                    **training_settings(cfg, job.network)}
        sha = write_bundle(Path(artifact_root) / bundle_rel, result.model, dose=design.doses[job.dose],
                           dose_label=job.dose, extra={"view": job.view, "training": training})
        t1 = time.perf_counter()
        gap = likelihood_gap(result.model.net, train_ds, neighbor_count=design.neighbor_count,
                             grouping_seed=design.seeds.grouping, thinning=cfg.thinning, seed=seed + 3, device=device)
        evaluation = evaluate(result.model.net, test_ds, neighbor_count=design.neighbor_count,
                              grouping_seed=design.seeds.grouping, device=device)
        histories[seed], evaluations[seed], gaps[seed] = result.history, evaluation, gap
        timing.append({"seed": seed, "train_seconds": train_seconds, "evaluate_seconds": time.perf_counter() - t1,
                       "epoch_seconds": [h["seconds"] for h in result.history], "world_size": world.size})
        best = result.history[result.best_epoch - 1]
        entries.append({
            "dose": job.dose, "nphotons": design.doses[job.dose], "view": job.view, "gridsize": job.gridsize,
            "seed": seed, "train_data": str(train_path), "test_data": str(test_path),
            "artifact_dir": str(job.relative_dir(extra)), "bundle_path": str(bundle_rel), "sha256": sha,
            "size": (Path(artifact_root) / bundle_rel).stat().st_size,
            "final_loss": best["train_loss"], "final_val_loss": best["val_loss"],
            "epochs": len(result.history), "best_epoch": result.best_epoch, "settings": training,
            "network": job.network, "groups": result.geometry, "likelihood_gap": gap,
            "evaluation": {**evaluation, "dose": job.dose, "view": job.view, "gridsize": job.gridsize},
            "status": "completed",
        })
    # every seed's bundle is written: only now the checkpoints go (a later seed's interruption
    # must not make the finished ones train again)
    for ckpt in checkpoints:
        ckpt.unlink(missing_ok=True)
    if not world.writes:
        return []
    losses = Path(records) / f"losses_{job.dose}_{job.view}"
    write_loss_table(losses.with_suffix(".csv"), {seed_suffix(seed, cfg.seeds[0]): h for seed, h in histories.items()})
    try:  # as the report names it
        model = model_of(job.network, "gridsize1" if job.gridsize == 1 else "trained").name
    except KeyError:  # a job no model of the study's is made from (PtychoPINN at gridsize 1, say)
        model = job.network
    plot_losses(losses.with_suffix(".png"), histories, title=f"{model}: {job.view} view, dose {job.dose}, gridsize {job.gridsize}")
    # the DVC metrics file: the errors and the gap closed alone, per seed (the manifest entries keep the rest)
    write_metrics(Path(records) / f"eval_{job.dose}_{job.view}.json",
                  {f"seed_{seed}": {**{k: v for k, v in e.items() if k.endswith(("_rmse", "_rmse_rad"))},
                                    **gap_closed(gaps[seed])}
                   for seed, e in evaluations.items()})
    if timing_dir is not None:
        write_timing(Path(timing_dir) / "phase_e" / f"{job.tag}.json", {
            "dose": job.dose, "view": job.view, "network": job.network, "gridsize": job.gridsize,
            "train_positions": train_ds.n, "seeds": timing})
    return entries
