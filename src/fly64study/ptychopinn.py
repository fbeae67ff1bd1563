"""PtychoPINN's network as published, in PyTorch.

Hoidn, Mishra, Mehta, "Physics constrained unsupervised deep learning for rapid, high resolution
scanning coherent diffraction reconstruction", Sci. Rep. 13, 22789 (2023), and the upstream
repository hoidn/PtychoPINN (``ptycho/model.py``, ``ptycho/params.py``): the shape below follows
its facts; the code is the study's own.

One encoder reads a group's C measured diffraction amplitudes (sqrt(counts) / s, fftshifted, every
detector pixel) as C input channels: Conv-Conv-MaxPool blocks, ReLU, no skip connections, widths
s·(32, 64, 128) at N = 64 (one more level per doubling of N, the last always s·128). Two decoders of
the same shape (Conv-Conv-Upsample, widths s·(64, 32) at N = 64) end at N/2 and split their
channels: all but the last four give C amplitude (sigmoid) or C phase (π·tanh) channels for the
central N/2 × N/2 of each patch, zero-padded to N; the last four go through one more up-block to a
border branch (swish) that fills the rest of the N × N patch (upstream's ``probe.big``). The C
complex patches then share one object on the group's canvas (:class:`fly64study.model.Placement`,
upstream's ``object.big``). ``s`` is ``n_filters_scale`` (published: 2, 2.34 M parameters at
N = 64; 1: 0.59 M; a fraction, for the tiny test profile, rounds each width, none below
``MIN_WIDTH``). Convolutions start Glorot-uniform with zero bias, as Keras's do.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fly64study.model import ModelConfig, Placement

SETTINGS = ("n_filters_scale",)  # train.ptychopinn
DEFAULTS: dict = {}
BORDER_CHANNELS = 4  # upstream's c_outer: the decoder channels that feed the border branch
MIN_WIDTH = 8  # a fractional n_filters_scale (the tiny profile's) rounds no width below this


def levels(N: int) -> int:
    """Encoder levels: the encoder ends at 8 × 8 whatever N (3 at N = 64, 4 at N = 128)."""
    if N < 16 or N & (N - 1):
        raise ValueError(f"design.N: {N}; the published PtychoPINN network needs a power of two >= 16 "
                         "(its encoder halves N down to 8 pixels)")
    return int(math.log2(N)) - 3


def _scaled(scale: float, width: int) -> int:
    return max(MIN_WIDTH, round(scale * width))


def encoder_widths(N: int, scale: float) -> list[int]:
    """s·(…, 32, 64, 128): doubling per level, the last s·128."""
    return [_scaled(scale, 128 // 2 ** (levels(N) - 1 - i)) for i in range(levels(N))]


def decoder_widths(N: int, scale: float) -> list[int]:
    """s·(…, 64, 32): one up-block fewer than the encoder's levels, so a decoder ends at N/2."""
    return [_scaled(scale, 32 * 2 ** (levels(N) - 2 - i)) for i in range(levels(N) - 1)]


def border_width(N: int, scale: float) -> int:
    """The border branch's up-block: s·2048/N channels (s·32 at N = 64), as upstream."""
    return _scaled(scale, 2048 // N)


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    nn.init.xavier_uniform_(conv.weight)  # Keras's glorot_uniform and zero bias
    nn.init.zeros_(conv.bias)
    return conv


def conv_pool(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(_conv(c_in, c_out), nn.ReLU(), _conv(c_out, c_out), nn.ReLU(), nn.MaxPool2d(2))


def conv_up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(_conv(c_in, c_out), nn.ReLU(), _conv(c_out, c_out), nn.ReLU(),
                         nn.Upsample(scale_factor=2, mode="nearest"))


class Decoder(nn.Module):
    """Encoded features -> C channels of one component on the N × N patch: a central N/2 head (its
    activation) padded with zeros, plus a border branch (swish) masked to the outside of that centre."""

    def __init__(self, c_in: int, N: int, scale: float, C: int, activation):
        super().__init__()
        widths = decoder_widths(N, scale)
        blocks, c = [], c_in
        for w in widths:
            blocks.append(conv_up(c, w))
            c = w
        self.base = nn.Sequential(*blocks)
        self.central = _conv(c - BORDER_CHANNELS, C)
        self.border = nn.Sequential(conv_up(BORDER_CHANNELS, border_width(N, scale)), _conv(border_width(N, scale), C))
        self.activation = activation
        self.pad = N // 4
        mask = torch.ones(N, N)
        mask[self.pad:N - self.pad, self.pad:N - self.pad] = 0.0
        self.register_buffer("border_mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.base(x)  # (B, w, N/2, N/2)
        centre = F.pad(self.activation(self.central(x[:, :-BORDER_CHANNELS])), (self.pad,) * 4)
        return centre + F.silu(self.border(x[:, -BORDER_CHANNELS:])) * self.border_mask


def _phase(x: torch.Tensor) -> torch.Tensor:
    return math.pi * torch.tanh(x)


class PtychoPINNNetwork(nn.Module):
    """The inference network as published: (B, C, N, N) amplitudes, (B, C, 2) offsets of each pattern
    from its group centre (pixels) -> (B, C, N, N) complex64 patches, one object per group."""

    def __init__(self, cfg: ModelConfig, probe: torch.Tensor):
        super().__init__()
        scale = cfg.settings["n_filters_scale"]
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"train.ptychopinn.n_filters_scale: {scale!r}; a number > 0 (published: 2)")
        self.cfg = cfg
        probe = probe.to(torch.complex64)
        intensity = probe.abs() ** 2
        self.register_buffer("probe", probe)
        self.register_buffer("weight", intensity / intensity.max())  # the group canvas's weights
        blocks, c = [], cfg.C
        for w in encoder_widths(cfg.N, scale):
            blocks.append(conv_pool(c, w))
            c = w
        self.encoder = nn.Sequential(*blocks)
        self.amplitude = Decoder(c, cfg.N, scale, cfg.C, torch.sigmoid)
        self.phase = Decoder(c, cfg.N, scale, cfg.C, _phase)

    def forward(self, amplitudes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        code = self.encoder(amplitudes)
        patches = torch.polar(self.amplitude(code).float(), self.phase(code).float())  # physics in fp32
        if self.cfg.C == 1:
            return patches
        return Placement(offsets, self.weight).average(patches)
