"""The study's PINN networks by name, and the training model that wraps either.

``NETWORKS`` maps a network's params name (``train.<name>`` holds its settings, a stage family
trains it) to its class; :func:`build_network` makes one from a :class:`~fly64study.model.ModelConfig`
(what a bundle records). :class:`Autoencoder` is the training model (upstream's name for it):
network -> the group's canvas -> × probe -> |F| -> Poisson NLL against the counts.
"""
from __future__ import annotations

import torch
from torch import nn

from fly64study import physics
from fly64study import bp_unet, ptychopinn
from fly64study.model import ModelConfig, poisson_nll

# name -> the module holding it: its class, the settings it reads from train.<name> (SETTINGS) and
# the value of any setting older bundles or callers may lack (DEFAULTS)
NETWORKS = {"ptychopinn": (ptychopinn.PtychoPINNNetwork, ptychopinn), "bp_unet": (bp_unet.BackprojectionUNet, bp_unet)}


def network_config(N: int, gridsize: int, intensity_scale: float, network: str, settings) -> ModelConfig:
    """A :class:`ModelConfig` from a params section ``train.<network>`` or a mapping (its own keys only;
    one a mapping lacks takes the network's default, where it has one)."""
    if network not in NETWORKS:
        raise ValueError(f"network {network!r}: unknown; choose from {sorted(NETWORKS)}")
    module = NETWORKS[network][1]
    given = settings if isinstance(settings, dict) else {k: getattr(settings, k) for k in module.SETTINGS}
    own = {k: {**module.DEFAULTS, **given}[k] for k in module.SETTINGS}
    return ModelConfig(N=N, gridsize=gridsize, intensity_scale=intensity_scale, network=network, settings=own)


def build_network(cfg: ModelConfig, probe: torch.Tensor) -> nn.Module:
    """The inference network ``cfg`` describes: ``net(amplitudes (B, C, N, N), offsets (B, C, 2))``
    -> (B, C, N, N) complex patches, one object per group; ``net.probe`` and ``net.cfg`` as given."""
    if cfg.network not in NETWORKS:
        raise ValueError(f"network {cfg.network!r}: unknown; choose from {sorted(NETWORKS)}")
    return NETWORKS[cfg.network][0](cfg, probe)


class Autoencoder(nn.Module):
    """The training model: network, the overlap constraint (inside the network), and the physics.

    ``forward(amplitudes, offsets, counts=None)`` returns (patches, predicted amplitudes, loss);
    the network's patches (for gridsize > 1 one shared object per group, averaged on its canvas
    with probe-intensity weights) go through the probe and the far-field model.
    """

    def __init__(self, cfg: ModelConfig, probe: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.net = build_network(cfg, probe)

    def forward(self, amplitudes: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor | None = None):
        patches = self.net(amplitudes, offsets)  # (B, C, N, N) complex, group-consistent
        predicted = physics.diffraction_amplitude(patches, self.net.probe)  # (B, C, N, N)
        loss = None if counts is None else poisson_nll(predicted, counts, self.cfg.intensity_scale)
        return patches, predicted, loss
