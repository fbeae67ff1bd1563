"""BP-UNet: the study's own physics-informed network, a U-Net over each pattern's back-projection.

The network sees the data through the physics: each pattern's measured amplitude, given the
probe's far-field phase, is propagated back and divided by the probe (a regularised
back-projection, the ``A_dagger`` input of model-based deep learning). That estimate is
object-aligned, so a U-Net only has to clean it up locally; for gridsize 2 the four estimates
are also averaged on the group's canvas (weighted by probe intensity), so the network sees the
overlap too. Its output starts as the back-projection's phase (the last layer is zero at
initialisation) and learns a bounded correction.

It is not the published PtychoPINN (:mod:`fly64study.ptychopinn`): it runs once per member on
that member's own back-projection, keeps by default only the detector pixels inside the probe's far
field (``pupil``: where the probe's far-field amplitude exceeds that share of its maximum; 0 keeps
every pixel) and carries a phase prior (``phase_prior``: the back-projection's phase, gated, plus a
learned correction; without it the phase is the correction alone). Trained with the same loss and
group canvas.

  ``ConvBlock``           two 3×3 convolutions with SiLU
  ``UNet``                encoder/decoder with skip connections (its input lives in object space)
  ``BackprojectionUNet``  (B, C, N, N) amplitudes, (B, C, 2) offsets -> (B, C, N, N) complex patches
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fly64study import physics
from fly64study.model import ModelConfig, Placement

# Back-projection: O0 = psi0 P* / (|P|^2 + ALPHA max|P|^2); far-field phase used where |P^| > pupil of its max.
_ALPHA = 0.05
_AMPLITUDE_START = 0.9  # transmission the network starts from (the last layer is zero at init)
_GATE_START = 0.95  # share of the back-projected phase the network starts from
SETTINGS = ("width", "depth", "stride", "skips", "pupil", "phase_prior")  # train.bp_unet
DEFAULTS = {"pupil": 0.05, "phase_prior": True}  # what a bundle made before these were settings used


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1), nn.SiLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class UNet(nn.Module):
    """U-Net with skip connections.

    With ``stride`` s > 1 each s×s pixel block becomes channels first (``pixel_unshuffle``) and
    the output is unfolded back: no convolution runs at full resolution, where few channels keep
    the CPU's GEMMs far from their peak (measured: 15 GFLOP/s at 64² × 16 channels, 50 at 16² × 64).
    ``skips="add"`` projects the coarser level to the finer one's width (1×1) and adds the skip,
    so a decoder block convolves w channels instead of 3w (the concatenation cost more than the
    whole encoder).
    """

    def __init__(self, c_in: int, c_out: int, width: int, depth: int, stride: int = 1, skips: str = "concat"):
        super().__init__()
        if skips not in ("concat", "add"):
            raise ValueError(f"train.bp_unet.skips: {skips!r}; choose concat or add")
        self.stride, self.skips = stride, skips
        c_in, c_out = c_in * stride**2, c_out * stride**2
        widths = [width * 2 ** level for level in range(depth + 1)]
        self.encoder = nn.ModuleList(
            [ConvBlock(c_in, widths[0])] + [ConvBlock(widths[i], widths[i + 1]) for i in range(depth)]
        )
        if skips == "concat":
            self.project = nn.ModuleList()
            self.decoder = nn.ModuleList(
                [ConvBlock(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))]
            )
        else:
            self.project = nn.ModuleList([nn.Conv2d(widths[i + 1], widths[i], 1) for i in reversed(range(depth))])
            self.decoder = nn.ModuleList([ConvBlock(widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        x = self.encoder[0](x)
        for block in self.encoder[1:]:
            skips.append(x)
            x = block(F.avg_pool2d(x, 2))  # (B, width * 2**level, n / 2**level, n / 2**level)
        for level, block in enumerate(self.decoder):
            if self.skips == "add":
                x = F.interpolate(self.project[level](x), scale_factor=2, mode="bilinear", align_corners=False)
                x = block(x + skips.pop())
            else:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
                x = block(torch.cat([x, skips.pop()], dim=1))
        x = self.head(x)
        return F.pixel_shuffle(x, self.stride) if self.stride > 1 else x


class BackprojectionUNet(nn.Module):
    """The inference network: measured amplitudes of a group -> complex object patches.

    ``forward(amplitudes, offsets)``: amplitudes (B, C, N, N) float, sqrt(counts) / s as stored
    in ``diffraction`` (fftshifted); offsets (B, C, 2) float, (dx, dy) of each pattern from its
    group centre, pixels. Returns (B, C, N, N) complex64 transmissions: amplitude in (0, 1)
    (sigmoid: a passive specimen absorbs), phase = back-projection phase + a correction in
    (-pi, pi) (tanh).
    """

    def __init__(self, cfg: ModelConfig, probe: torch.Tensor):
        super().__init__()
        width, depth, stride, skips, pupil, self.phase_prior = ({**DEFAULTS, **cfg.settings}[k] for k in SETTINGS)
        if cfg.N % (stride * 2 ** depth):
            raise ValueError(f"train.bp_unet.depth: N = {cfg.N} is not divisible by stride * 2**depth = "
                             f"{stride * 2 ** depth}")
        self.cfg = cfg
        probe = probe.to(torch.complex64)
        far = physics.far_field(probe)  # (N, N), zero frequency at [0, 0]
        mag = far.abs()
        intensity = probe.abs() ** 2
        self.register_buffer("probe", probe)
        self.register_buffer("far_phase", torch.where(mag > pupil * mag.max(), far / mag.clamp_min(1e-12),
                                                      torch.zeros_like(far)))
        self.register_buffer("inverse_probe", probe.conj() / (intensity + _ALPHA * intensity.max()))
        self.register_buffer("weight", intensity / intensity.max())  # where each pattern says something
        self.unet = UNet(c_in=5, c_out=3, width=width, depth=depth, stride=stride, skips=skips)
        nn.init.zeros_(self.unet.head.weight)
        nn.init.zeros_(self.unet.head.bias)

    def backproject(self, amplitudes: torch.Tensor) -> torch.Tensor:
        """O0 = F^-1[A exp(i arg P^)] P* / (|P|^2 + alpha max|P|^2). (..., N, N) -> complex (..., N, N)."""
        unshifted = torch.fft.ifftshift(amplitudes, dim=(-2, -1))
        psi = torch.fft.ifft2(unshifted * self.far_phase, norm="ortho")
        return psi * self.inverse_probe

    def forward(self, amplitudes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        B, C, N, _ = amplitudes.shape
        own = self.backproject(amplitudes)  # (B, C, N, N) complex
        placement = Placement(offsets, self.weight) if C > 1 else None  # gridsize 1: nothing to share
        shared = placement.average(own) if placement else own  # the group's estimate, per member
        feats = torch.stack([own.real, own.imag, shared.real, shared.imag,
                             self.weight.expand(B, C, N, N)], dim=2)  # (B, C, 5, N, N)
        out = self.unet(feats.reshape(B * C, 5, N, N)).reshape(B, C, 3, N, N).float()  # physics in fp32 (bf16 autocast)
        amp = torch.sigmoid(_logit(_AMPLITUDE_START) + out[:, :, 0])
        phase = math.pi * torch.tanh(out[:, :, 1])
        if self.phase_prior:  # a per-pixel gate on the back-projected phase lets the net drop it where it is noise
            phase = torch.sigmoid(_logit(_GATE_START) + out[:, :, 2]) * torch.angle(shared) + phase
        # gridsize > 1: one object per group, so every member shows the group's weighted average
        patches = torch.polar(amp, phase)
        return placement.average(patches) if placement else patches


