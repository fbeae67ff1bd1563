"""Phase A: the study's parameters, read from ``params.yaml`` into frozen dataclasses and validated.

One function, :func:`load_params`, turns the YAML into :class:`Params`; every stage calls it, so
an invalid value stops any stage before long work starts, with a :class:`ParamsError` that
names the field (``design.neighbor_count``) and the fix. Unknown keys are errors too.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

# Labels become stage names (generate@1e3), folder names (dose_1e3) and DVC params keys
# (design.doses.1e3): path-safe, and without '.', which would split DVC's key in two.
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]*$")
METRIC_COMPONENTS = ("phase", "amplitude")
SPLIT_AXES = ("x", "y")
SAMPLE_SUFFIXES = (".npz", ".h5", ".hdf5")  # generate.base_sample: NPZ (upstream layout) or Ptychodus product


class ParamsError(ValueError):
    """A parameter is missing, unknown or out of range; the message names it and the fix."""


# ------------------------------------------------------------------- which keys a stage reads
# dvc.yaml lists, per stage, the params keys it depends on; a key the code reads but the stage
# does not list leaves stale results "up to date". With FLY64STUDY_PARAMS_RECORD=<folder> set,
# every key read after validation is recorded and written there when the process ends
# (<pid>.json: argv and keys), so a test can compare each stage's reads with its listing.
RECORD_ENV = "FLY64STUDY_PARAMS_RECORD"
_reads: set[str] = set()
_recording = False


def _record(key: str) -> None:
    if _recording:
        _reads.add(key)


class _Section:
    """Base of the params dataclasses: a field read (not a validation) is recorded as its key."""

    _path = ""

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if _recording and name in type(self).__dataclass_fields__ and not isinstance(value, (_Section, _Keyed)):
            _record(object.__getattribute__(self, "_path") + name)
        return value


class _Keyed(dict):
    """A mapping section (doses, views, jobs): reading one entry records that entry's key; going
    over all entries records the whole mapping. A membership test reads no value and records nothing."""

    _path = ""

    def __getitem__(self, key):
        _record(f"{self._path}.{key}")
        return super().__getitem__(key)

    def get(self, key, default=None):
        _record(f"{self._path}.{key}")
        return super().get(key, default)

    def __iter__(self):
        _record(self._path)
        return super().__iter__()

    def keys(self):
        _record(self._path)
        return super().keys()

    def values(self):
        _record(self._path)
        return super().values()

    def items(self):
        _record(self._path)
        return super().items()


def _write_reads() -> None:
    folder = Path(os.environ[RECORD_ENV])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{os.getpid()}.json").write_text(json.dumps({"argv": sys.argv, "keys": sorted(_reads)}))


def _start_recording() -> None:
    global _recording
    if os.environ.get(RECORD_ENV) and not _recording:
        _recording = True
        atexit.register(_write_reads)


# --------------------------------------------------------------------------- design section
@dataclass(frozen=True)
class Seeds(_Section):
    simulation: int  # object, scan and Poisson noise (phase C)
    grouping: int  # K-choose-C neighbour groups (phases D, E)
    subsampling: int  # greedy Poisson-disc order of the overlap views (phase D)

    def check(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ParamsError(f"design.seeds.{f.name}: must be a non-negative integer")


@dataclass(frozen=True)
class MetricsDesign(_Section):
    ms_ssim_sigma: float  # Gaussian smoothing (pixels) of both images, either component, for ms_ssim_smoothed
    frc_threshold: float  # FRC level whose first sustained crossing defines the resolution
    components: tuple[str, ...]  # scored and reported in this order: phase first
    max_shift_px: float  # a registration estimate beyond this (either axis) is a failed registration

    def check(self) -> None:
        if not self.ms_ssim_sigma > 0:
            raise ParamsError("design.metrics.ms_ssim_sigma: must be > 0 (design value 1.0)")
        if not 0 < self.frc_threshold < 1:
            raise ParamsError("design.metrics.frc_threshold: must lie in (0, 1) (design value 0.5)")
        if not 0 < self.max_shift_px <= 16:
            raise ParamsError("design.metrics.max_shift_px: must lie in (0, 16] pixels (design value 3: probe and "
                              "positions are known, so a real misregistration is sub-pixel to a few pixels)")
        if sorted(self.components) != sorted(METRIC_COMPONENTS):
            raise ParamsError(
                f"design.metrics.components: expected both of {list(METRIC_COMPONENTS)}, each once, in the order "
                f"to score them (the report needs both), got {list(self.components)}"
            )


@dataclass(frozen=True)
class Design(_Section):
    doses: dict[str, float]  # stage label -> expected photons per diffraction pattern
    gridsizes: tuple[int, ...]  # PINN grouping: C = gridsize**2 patterns per group
    neighbor_count: int  # K nearest neighbours a group is drawn from
    N: int  # patch and detector size, pixels
    views: dict[str, float | None]  # view -> overlap fraction f (spacing S = (1 - f) * D); null keeps every position
    split_axis: str  # train below the midpoint of the scanned range on this axis, test above
    seeds: Seeds
    metrics: MetricsDesign

    def check(self) -> None:
        if not self.doses:
            raise ParamsError("design.doses: the dose list is empty; give at least one, e.g. \"1e3\": 1000.0")
        for label, dose in self.doses.items():
            _check_label(label, "design.doses")
            if not (math.isfinite(dose) and dose > 0):
                raise ParamsError(
                    f"design.doses.{label}: dose {dose!r} must be a positive number of photons per pattern"
                )
        if not self.gridsizes:
            raise ParamsError("design.gridsizes: empty; the study uses [1, 2]")
        if len(set(self.gridsizes)) != len(self.gridsizes) or min(self.gridsizes) < 1:
            raise ParamsError(f"design.gridsizes: expected distinct integers >= 1, got {list(self.gridsizes)}")
        for g in self.gridsizes:
            if self.neighbor_count < g * g:
                raise ParamsError(
                    f"design.neighbor_count: K={self.neighbor_count} is smaller than C = gridsize² = {g * g} "
                    f"for gridsize {g}; K-choose-C grouping needs K >= C (design value K = 7)"
                )
        if self.N < 16 or self.N % 2:
            raise ParamsError(f"design.N: patch size {self.N} must be an even integer >= 16 (design value 128)")
        if not self.views:
            raise ParamsError("design.views: no overlap view; the study uses dense: 0.7 and sparse: 0.2")
        for name, f in self.views.items():
            _check_label(name, "design.views")
            if f is not None and not (0 <= f < 1):
                raise ParamsError(
                    f"design.views.{name}: overlap fraction {f!r} is outside [0, 1); "
                    "the spacing S = (1 - f) * D must be positive (dense 0.7, sparse 0.2; null keeps every position)"
                )
        if self.split_axis not in SPLIT_AXES:
            raise ParamsError(f"design.split_axis: expected one of {list(SPLIT_AXES)}, got {self.split_axis!r}")
        self.seeds.check()
        self.metrics.check()

    def group_size(self, gridsize: int) -> int:
        """C, the number of patterns in one group of the given gridsize."""
        return gridsize * gridsize


# ------------------------------------------------------------------------- generate section
@dataclass(frozen=True)
class ProbeOptics(_Section):
    """A zone-plate-like focus: annular pupil, propagated to a defocus plane."""

    aperture: float  # pupil radius as a fraction of the detector's half-width (the NA used)
    central_stop: float  # fraction of the pupil radius blocked by the central stop
    defocus: float  # quadratic pupil phase at the pupil edge, radians (0 = in focus)

    def check(self) -> None:
        if not 0 < self.aperture <= 1:
            raise ParamsError("generate.probe.aperture: must lie in (0, 1] (fraction of the detector half-width)")
        if not 0 <= self.central_stop < 1:
            raise ParamsError("generate.probe.central_stop: must lie in [0, 1)")
        if not (math.isfinite(self.defocus) and self.defocus >= 0):
            raise ParamsError("generate.probe.defocus: must be a finite phase >= 0, radians")


@dataclass(frozen=True)
class ObjectModel(_Section):
    """A two-material synthetic specimen: projected thickness -> absorption and phase shift."""

    amplitude_min: float  # transmission of the thickest absorbing region, in (0, 1]
    phase_range: float  # peak-to-peak phase shift, radians
    particle_density: float  # particles (discs with hard edges) per 1000 object pixels
    particle_radius_max: float  # largest particle radius, pixels (smallest: 1 px)

    def check(self) -> None:
        if not 0 < self.amplitude_min <= 1:
            raise ParamsError("generate.object.amplitude_min: must lie in (0, 1]")
        if not 0 < self.phase_range <= 2 * math.pi:
            raise ParamsError("generate.object.phase_range: must lie in (0, 2π] radians")
        if not self.particle_density >= 0:
            raise ParamsError("generate.object.particle_density: must be >= 0")
        if not self.particle_radius_max >= 1:
            raise ParamsError("generate.object.particle_radius_max: must be >= 1 pixel")


@dataclass(frozen=True)
class Geometry(_Section):
    """Where the simulated experiment sits in metres and electronvolts: not used by the simulation
    (it works in pixels) but carried in phase C's metadata so that exported reconstructions
    (Ptychodus products) give positions in metres. A base sample from a Ptychodus product brings
    its own object pixel size and energy, which take precedence."""

    pixel_size_m: float  # object (and probe) pixel, metres
    photon_energy_eV: float  # noqa: N815 - the unit in the name, as Ptychodus spells it
    detector_distance_m: float  # object to detector

    def check(self) -> None:
        for name in ("pixel_size_m", "photon_energy_eV", "detector_distance_m"):
            if not getattr(self, name) > 0:
                raise ParamsError(f"generate.geometry.{name}: must be > 0")


@dataclass(frozen=True)
class Generate(_Section):
    object_size: int  # M, side of the synthetic object (a base_sample brings its own size)
    n_positions: int  # scan positions per dose, before the train/test split
    # "" = synthetic probe and object; else a file under inputs/: an NPZ in the upstream PtychoPINN layout
    # (probeGuess, objectGuess) or a Ptychodus product (.h5/.hdf5); read by fly64study.samples
    base_sample: str
    geometry: Geometry
    probe: ProbeOptics
    object: ObjectModel

    def check(self, design: Design) -> None:
        if self.object_size < design.N + 2:
            raise ParamsError(
                f"generate.object_size: M={self.object_size} leaves no room to scan an N={design.N} probe; "
                f"use M >= N + 2 (several times N in practice)"
            )
        if self.n_positions < 2:
            raise ParamsError("generate.n_positions: need at least 2 scan positions (one per split)")
        if self.base_sample:
            p = Path(self.base_sample)
            if (p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] != "inputs"
                    or p.suffix not in SAMPLE_SUFFIXES):
                raise ParamsError(
                    f"generate.base_sample: {self.base_sample!r} must be a relative path inside inputs/ ending in "
                    f"{', '.join(SAMPLE_SUFFIXES)} (inputs/ is a declared dependency of the generate stages), or \"\" "
                    "for the synthetic sample"
                )
            if not p.is_file():  # relative to the repository root, where every stage runs
                raise ParamsError(
                    f"generate.base_sample: {self.base_sample}: no such file; put the NPZ (probeGuess, objectGuess) "
                    "or Ptychodus product there and `git add` or `dvc add` it, or set \"\" for the synthetic sample"
                )
        self.geometry.check()
        self.probe.check()
        self.object.check()


# -------------------------------------------------------------------------- overlap section
@dataclass(frozen=True)
class Overlap(_Section):
    min_positions: int  # a view keeping fewer positions than this (per split) is an error

    def check(self, design: Design) -> None:
        c_max = max(design.group_size(g) for g in design.gridsizes)
        if self.min_positions < c_max:
            raise ParamsError(
                f"overlap.min_positions: {self.min_positions} is below C = {c_max}, the largest group; "
                f"use at least 2·C = {2 * c_max}"
            )


# ---------------------------------------------------------------------------- train section
NETWORKS = ("bp_unet", "ptychopinn")  # the PINN networks (fly64study.networks), each a train.<name> section
# what train@<dose>-<job> trains (every job: its gridsize-1 job is BP-UNet-gs1) and the training CLI's default;
# names and file names carry another network's name (`dense (dose=1e3, ptychopinn)`)
DEFAULT_NETWORK = "bp_unet"


@dataclass(frozen=True)
class PtychoPINNNet(_Section):
    """The published PtychoPINN network (fly64study.ptychopinn)."""

    n_filters_scale: float  # s: widths s·(32, 64, 128) at N = 64 (published 2; a fraction only for tests)

    def check(self, design: Design) -> None:
        if not self.n_filters_scale > 0:
            raise ParamsError("train.ptychopinn.n_filters_scale: must be > 0 (published: 2; 1 on a 2-core CPU)")
        if design.N < 16 or design.N & (design.N - 1):
            raise ParamsError(f"design.N: {design.N}; the published PtychoPINN network needs a power of two >= 16 "
                              "(its encoder halves N down to 8 pixels)")


@dataclass(frozen=True)
class BPUNetNet(_Section):
    """BP-UNet, the study's back-projection U-Net (fly64study.bp_unet)."""

    width: int  # channels of the first U-Net level
    depth: int  # U-Net down-sampling levels
    stride: int  # the U-Net works at N / stride (space-to-depth); 1 = full resolution
    skips: str  # how the decoder joins a skip: "add" (projected and summed) or "concat"
    pupil: float  # detector pixels kept: the probe's far field above this share of its maximum; 0 = every pixel
    phase_prior: bool  # the back-projection's phase (gated) under the learned correction, or the correction alone

    def check(self, design: Design) -> None:
        if not 0 <= self.pupil < 1:
            raise ParamsError(f"train.bp_unet.pupil: {self.pupil}; must lie in [0, 1) (0.05: the probe's far field; "
                              "0: every detector pixel)")
        if self.width < 1:
            raise ParamsError("train.bp_unet.width: must be >= 1")
        if self.stride not in (1, 2, 4):
            raise ParamsError(f"train.bp_unet.stride: {self.stride}; choose 1 (full resolution), 2 or 4")
        if self.depth < 1 or design.N % (self.stride * 2 ** self.depth):
            raise ParamsError(f"train.bp_unet.depth: must be >= 1 with design.N = {design.N} divisible by "
                              f"train.bp_unet.stride * 2**depth = {self.stride} * 2**{self.depth}")
        if self.skips not in ("add", "concat"):
            raise ParamsError(f"train.bp_unet.skips: {self.skips!r}; choose add or concat")


@dataclass(frozen=True)
class Train(_Section):
    jobs: dict[str, int]  # job -> gridsize; each job trains on the design view of its name
    ptychopinn: PtychoPINNNet  # the published network: the compared views' jobs (train_ptychopinn@<dose>-<view>)
    bp_unet: BPUNetNet  # the back-projection U-Net: every job (train@<dose>-<job>)
    epochs: int  # at most this many epochs (early stopping may end sooner)
    batch_size: int  # groups per optimiser step
    learning_rate: float  # Adam
    n_groups: int  # training groups per gridsize > 1 job (above the positions: K-choose-C oversampling); 0 = one per position
    val_fraction: float  # share of the positions held out as one compact block, its groups formed inside it
    patience: int  # stop after this many epochs without a better validation loss
    lr_patience: int  # halve the learning rate after this many epochs without a better one; 0 = constant
    thinning: float  # fraction of each pattern's counts the network sees in training (binomial split), in (0, 1)
    seeds: tuple[int, ...]  # one model per seed (network initialisation, validation block, batch order)

    def network(self, name: str) -> _Section:
        """A network's own settings section, ``train.<name>``."""
        if name not in NETWORKS:
            raise ParamsError(f"network {name!r}: unknown; choose from {list(NETWORKS)}")
        return getattr(self, name)

    def check(self, design: Design) -> None:
        if not self.jobs:
            raise ParamsError("train.jobs: no job; the study trains baseline: 1, dense: 2, sparse: 2")
        for job, g in self.jobs.items():
            if job not in design.views:
                raise ParamsError(f"train.jobs.{job}: not a view of design.views {list(design.views)}")
            if g not in design.gridsizes:
                raise ParamsError(f"train.jobs.{job}: gridsize {g} is not in design.gridsizes {list(design.gridsizes)}")
        self.ptychopinn.check(design)
        self.bp_unet.check(design)
        if self.epochs < 1:
            raise ParamsError("train.epochs: must be >= 1")
        if self.batch_size < 1:
            raise ParamsError("train.batch_size: must be >= 1")
        if not self.learning_rate > 0:
            raise ParamsError("train.learning_rate: must be > 0")
        if self.n_groups < 0:
            raise ParamsError("train.n_groups: must be >= 0 (0 = one group per position)")
        if not 0 < self.val_fraction < 1:
            raise ParamsError("train.val_fraction: must lie in (0, 1)")
        if self.patience < 1:
            raise ParamsError("train.patience: must be >= 1")
        if self.lr_patience < 0:
            raise ParamsError("train.lr_patience: must be >= 0 (0 = a constant learning rate)")
        if not 0 < self.thinning < 1:
            # without the split, refine@ would score the very counts it sees, and so fit the test split's noise
            raise ParamsError("train.thinning: must lie in (0, 1), e.g. 0.5 (half of each pattern's counts as input, "
                              "the loss scores the rest); 0, no split, would let refine@ fit the noise it reconstructs")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ParamsError(f"train.seeds: expected distinct non-negative integers, e.g. [7] or [7, 8, 9]; "
                              f"got {list(self.seeds)}")


# ---------------------------------------------------------------------- reconstruct section
NOISE_MODELS = ("gaussian", "poisson")  # pty-chi's LSQML noise models
STITCHING = ("one_per_position", "every_group")  # how a PINN's patches become one field (compare.stitching)


@dataclass(frozen=True)
class Tune(_Section):
    """The LSQML settings tried per dose and compared view on that view's training split
    (tune@<dose>-<view>); the best by phase MS-SSIM against the split's own truth is what reconstruct
    and hybrid use on the view's test split."""

    noise_models: tuple[str, ...]  # of gaussian, poisson
    tv_weights: tuple[float, ...]  # object total-variation weights (0 = none)
    step_sizes: tuple[float, ...]  # object step sizes
    score_every: int  # epochs between scorings; the chosen epochs is one of them or reconstruct.epochs

    def check(self, design: Design) -> None:
        for name, values in (("noise_models", self.noise_models), ("tv_weights", self.tv_weights),
                             ("step_sizes", self.step_sizes)):
            if not values or len(set(values)) != len(values):
                raise ParamsError(f"reconstruct.tune.{name}: expected distinct values, at least one, got {list(values)}")
        for m in self.noise_models:
            if m not in NOISE_MODELS:
                raise ParamsError(f"reconstruct.tune.noise_models: {m!r}; choose from {list(NOISE_MODELS)}")
        if min(self.tv_weights) < 0:
            raise ParamsError("reconstruct.tune.tv_weights: must be >= 0 (0 = no total-variation term)")
        if min(self.step_sizes) <= 0:
            raise ParamsError("reconstruct.tune.step_sizes: must be > 0 (pty-chi's default is 1)")
        if self.score_every < 1:
            raise ParamsError("reconstruct.tune.score_every: must be >= 1 (epochs between scorings; "
                              "reconstruct.epochs or more scores the last epoch only)")


@dataclass(frozen=True)
class Reconstruct(_Section):
    """pty-chi LSQML on each view's test split (phase F)."""

    epochs: int  # at most this many LSQML epochs (every pattern once per epoch); tune@<dose>-<view> chooses how many
    batch_size: int  # patterns per LSQML update
    seed: int  # pty-chi's batch order
    refine_probe: bool  # false: the known probe stays fixed (as the PINN's does)
    tune: Tune  # the settings grid chosen from per dose and view, on that view's training data only

    def check(self, design: Design) -> None:
        self.tune.check(design)
        if self.epochs < 1:
            raise ParamsError("reconstruct.epochs: must be >= 1 (LSQML converged here in 30-100)")
        if self.batch_size < 1:
            raise ParamsError("reconstruct.batch_size: must be >= 1 (32 converged here)")
        if self.seed < 0:
            raise ParamsError("reconstruct.seed: must be a non-negative integer")


def _check_networks(names: tuple[str, ...], where: str, at_least: int = 1) -> None:
    if len(names) < at_least or len(set(names)) != len(names) or not set(names) <= set(NETWORKS):
        raise ParamsError(f"{where}: expected distinct network names{', at least one,' if at_least else ''} of "
                          f"{list(NETWORKS)}; got {list(names)}")


# --------------------------------------------------------------------------- refine section
@dataclass(frozen=True)
class Refine(_Section):
    """<network>+refine: each trained compared model of the listed networks, fitted further to its test
    split's own counts (train.thinning's split, train.val_fraction held out for stopping; never the truth)."""

    networks: tuple[str, ...]  # whose compared models refine@<dose>-<view> refines (of ptychopinn, bp_unet); [] = none
    epochs: int  # at most this many epochs on the test split (stopping on the held-out share may end sooner)
    learning_rate: float  # Adam, constant
    patience: int  # stop after this many epochs without a better held-out loss

    def check(self) -> None:
        _check_networks(self.networks, "refine.networks", at_least=0)
        if self.epochs < 1:
            raise ParamsError("refine.epochs: must be >= 1")
        if not self.learning_rate > 0:
            raise ParamsError("refine.learning_rate: must be > 0 (a fine-tune: usually below train.learning_rate)")
        if self.patience < 1:
            raise ParamsError("refine.patience: must be >= 1")


# --------------------------------------------------------------------------- hybrid section
@dataclass(frozen=True)
class Hybrid(_Section):
    """<network>+LSQML: LSQML with tune@<dose>-<view>'s settings, started from each trained compared model's
    stitched test field of the listed networks instead of a flat object (hybrid@<dose>-<view>-<network>);
    no truth read."""

    networks: tuple[str, ...]  # whose fields start LSQML (of ptychopinn, bp_unet)
    epochs: int  # LSQML epochs from the PINN's start (or tune@'s chosen epochs, where fewer)

    def check(self, reconstruct: Reconstruct) -> None:
        _check_networks(self.networks, "hybrid.networks")
        if not 1 <= self.epochs <= reconstruct.epochs:
            raise ParamsError(f"hybrid.epochs: {self.epochs}; must lie in [1, reconstruct.epochs = {reconstruct.epochs}] "
                              "(a warm start; hybrid@ runs fewer where tune@<dose>-<view> chose fewer)")


# -------------------------------------------------------------------------- compare section
@dataclass(frozen=True)
class Compare(_Section):
    """Which (view) comparisons phase G makes (every model of fly64study.models on the view's test split),
    BP-UNet-gs1's job, and how a network's patches become its field."""

    views: tuple[str, ...]  # views with an overlap fraction and a training job of their own name
    baseline: str  # the training job whose bundle is the BP-UNet-gs1 model (gridsize 1)
    stitching: str  # a network's field: each position's patch once, or every member of a group at every position
    synchronise_phases: bool  # turn each patch's constant phase (which no pattern fixes) to agree with its neighbours'

    def check(self, design: Design, train: Train) -> None:
        if self.stitching not in STITCHING:
            raise ParamsError(f"compare.stitching: {self.stitching!r}; choose one of {list(STITCHING)} (one_per_position: "
                              "each position's patch once; every_group: upstream's reassembly)")
        if not self.views or len(set(self.views)) != len(self.views):
            raise ParamsError(f"compare.views: expected distinct view names, got {list(self.views)}")
        for v in self.views:
            _check_label(v, "compare.views")
            if design.views.get(v, None) is None:
                raise ParamsError(
                    f"compare.views: {v!r} must be a view of design.views with an overlap fraction "
                    f"(one of {[k for k, f in design.views.items() if f is not None]})"
                )
            if v not in train.jobs:
                raise ParamsError(f"compare.views: {v!r} has no training job in train.jobs {list(train.jobs)}")
        if train.jobs.get(self.baseline) != 1:
            raise ParamsError(
                f"compare.baseline: {self.baseline!r} must be a gridsize-1 job of train.jobs "
                f"({[k for k, g in train.jobs.items() if g == 1]})"
            )


@dataclass(frozen=True)
class Params(_Section):
    design: Design
    generate: Generate
    overlap: Overlap
    train: Train
    reconstruct: Reconstruct
    refine: Refine
    hybrid: Hybrid
    compare: Compare

    def check(self) -> None:
        self.design.check()
        self.generate.check(self.design)
        self.overlap.check(self.design)
        self.train.check(self.design)
        self.reconstruct.check(self.design)
        self.refine.check()
        self.hybrid.check(self.reconstruct)
        self.compare.check(self.design, self.train)


# ------------------------------------------------------------------------------ reading
def _yaml() -> YAML:
    # DVC's own reader (dvc.utils.serialize.parse_yaml): ruamel, YAML 1.2, safe. PyYAML reads
    # YAML 1.1, where an unquoted 1e3 is text; to DVC it is the number 1000.0.
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    return yaml


def read_params(path: str | Path = "params.yaml") -> Any:
    """The parsed params file, exactly as DVC parses it (before any validation)."""
    path = Path(path)
    if path.parent.name == "profiles" and path.stem != "default" and (path.parent / "default.yaml").is_file():
        # a profile holds only the keys it changes (fly64study.profiles): not a params file by itself
        raise ParamsError(f"{path}: a profile, only the keys it changes from profiles/default.yaml; write the whole "
                          f"params with `make profile PROFILE={path.stem}` (params.yaml) or `python -m "
                          f"fly64study.profiles {path.stem} --out <file>`, and pass that file")
    try:
        return _yaml().load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file; run from the repository root") from None
    except YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None


def write_params(raw: Mapping, path: str | Path) -> None:
    """Write a params mapping so that DVC and :func:`read_params` read it back equal (labels
    that look like numbers come out quoted); atomic."""
    from fly64study.files import atomic_path

    with atomic_path(Path(path)) as tmp, open(tmp, "w") as fh:
        _yaml().dump(raw, fh)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file (the committed default profile, or one from profiles/)."""
    return params_from_dict(read_params(path))


def params_from_dict(raw: Any) -> Params:
    """Build and validate :class:`Params` from a parsed params mapping."""
    params = _build(Params, raw, "")
    params.check()
    _start_recording()  # after validation: checking every field is not reading it
    return params


def _check_label(label: str, where: str) -> None:
    if "." in label:
        raise ParamsError(
            f"{where}.{label}: label {label!r} has a '.', which splits DVC's params key {where}.{label} in "
            f"two (\"Parameters ... are missing\" after the stage ran); write it without one, e.g. \"15e2\" for 1.5e3"
        )
    if not LABEL_RE.match(label):
        raise ParamsError(
            f"{where}.{label}: label {label!r} must be letters, digits, '_', '+' or '-' "
            "(it names stages, folders and DVC params keys), and quoted in YAML, e.g. \"1e3\""
        )


# keys that were parameters once: a params file that still has one is told what replaced it
RETIRED = {
    **{f"train.{key}": f"since 2026-12-07 the back-projection U-Net's settings live in its own section: move it to "
                       f"train.bp_unet.{key} (train.ptychopinn holds the published network's)"
       for key in ("width", "depth", "stride", "skips")},
    "reconstruct.tune.view": "since 2026-12-01 every compared view (compare.views) is tuned on its own "
                             "training split (tune@<dose>-<view>); delete the key",
}


def _build(cls: type, raw: Any, where: str) -> Any:
    prefix = f"{where}." if where else ""
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{where or 'params'}: expected a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in raw:
        if f"{prefix}{key}" in RETIRED:
            raise ParamsError(f"{prefix}{key}: no longer a parameter: {RETIRED[prefix + key]}")
        if key not in names:
            raise ParamsError(f"{prefix}{key}: unknown key; expected one of {names}")
    for name in names:
        if name not in raw:
            raise ParamsError(f"{prefix}{name}: missing; see profiles/default.yaml for its meaning")
    obj = cls(**{name: _coerce(hints[name], raw[name], f"{prefix}{name}") for name in names})
    object.__setattr__(obj, "_path", prefix)
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        return _build(tp, value, where)
    if origin is types.UnionType:  # X | None: null is allowed
        if value is None:
            return None
        (inner,) = [t for t in typing.get_args(tp) if t is not type(None)]
        return _coerce(inner, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # text is text to DVC too (YAML 1.2): a quoted "1e3" would be a string in dvc params diff
        if isinstance(value, str):
            raise ParamsError(f"{where}: expected a number, got the text {value!r}; write it unquoted")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ParamsError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected text (quote it in YAML), got {value!r}")
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        key_tp, item_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        out = _Keyed()
        out._path = where
        for key, v in value.items():
            if not isinstance(key, str):
                raise ParamsError(
                    f"{where}: key {key!r} is not text: DVC reads params.yaml as YAML 1.2, where an unquoted "
                    f"label such as 1e3 is the number 1000.0, so its stages would vanish from `dvc stage list`; "
                    f"quote it, e.g. \"1e3\": 1000.0")
            out[key] = _coerce(item_tp, v, f"{where}.{key}")
        return out
    raise TypeError(f"unsupported parameter type {tp!r} at {where}")


def design_record(design: Design) -> dict:
    """The validated design as plain JSON-able values (written to data/design.json)."""
    return {
        "doses": dict(design.doses),
        "dose_list": list(design.doses.values()),
        "gridsizes": list(design.gridsizes),
        "group_sizes": {str(g): design.group_size(g) for g in design.gridsizes},
        "neighbor_count": design.neighbor_count,
        "N": design.N,
        "views": dict(design.views),
        "split_axis": design.split_axis,
        "seeds": {f.name: getattr(design.seeds, f.name) for f in fields(design.seeds)},
        "metrics": {
            "ms_ssim_sigma": design.metrics.ms_ssim_sigma,
            "frc_threshold": design.metrics.frc_threshold,
            "components": list(design.metrics.components),
            "max_shift_px": design.metrics.max_shift_px,
        },
        # sqrt(dose) / (N/2): the amplitude scale of a transparent object under the probe
        # normalisation sum|P|^2 = (N/2)^2 (physics.normalise_probe).
        "intensity_scale_nominal": {k: math.sqrt(d) / (design.N / 2) for k, d in design.doses.items()},
    }
