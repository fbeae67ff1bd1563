"""PtychoPINN in PyTorch: an encoder/decoder from diffraction amplitudes to object patches, trained
through the known far-field forward model with a Poisson likelihood (no ground truth).

Parts before the whole:
  ``ConvBlock``            two 3×3 convolutions with SiLU
  ``UNet``                 encoder/decoder with skip connections (its input lives in object space)
  ``Translator``           sub-pixel placement of a group's patches on one canvas, and back (Fourier shifts)
  ``DiffractionToObject``  the inference network: (B, C, N, N) amplitudes -> (B, C, N, N) complex patches
  ``poisson_nll``          negative log-likelihood of the counts given predicted amplitudes
  ``PtychoPINN``           the training model: network -> overlap constraint -> × probe -> |F| -> NLL

The network sees the data through the physics: each pattern's measured amplitude, given the
probe's far-field phase, is propagated back and divided by the probe (a regularised
back-projection, the ``A_dagger`` input of model-based deep learning). That estimate is
object-aligned, so a U-Net only has to clean it up locally; for gridsize 2 the four estimates
are also averaged on the group's canvas (weighted by probe intensity), so the network sees the
overlap too. Its output starts as the back-projection's phase (the last layer is zero at
initialisation) and learns a bounded correction.

Reference: Hoidn, Mishra, Mehta, "Physics constrained unsupervised deep learning for rapid,
high resolution scanning coherent diffraction reconstruction", Sci. Rep. 13, 22789 (2023).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fly64study import physics

# Back-projection: O0 = psi0 P* / (|P|^2 + ALPHA max|P|^2); far-field phase used where |P^| > PUPIL of its max.
_ALPHA, _PUPIL = 0.05, 0.05
_AMPLITUDE_START = 0.9  # transmission the network starts from (the last layer is zero at init)
_GATE_START = 0.95  # share of the back-projected phase the network starts from
_BLEND = 0.01  # weight (of a peak-normalised probe intensity) below which a patch keeps its own value


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class ModelConfig:
    N: int  # patch / detector size, pixels
    gridsize: int  # C = gridsize^2 patterns per group
    width: int  # channels of the first encoder level (doubling per level)
    depth: int  # down-sampling levels; N must be divisible by 2**depth
    intensity_scale: float  # s: expected counts = (s * amplitude)^2

    @property
    def C(self) -> int:
        return self.gridsize * self.gridsize

    def to_json(self) -> dict:
        return asdict(self)


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
    def __init__(self, c_in: int, c_out: int, width: int, depth: int):
        super().__init__()
        widths = [width * 2 ** level for level in range(depth + 1)]
        self.encoder = nn.ModuleList(
            [ConvBlock(c_in, widths[0])] + [ConvBlock(widths[i], widths[i + 1]) for i in range(depth)]
        )
        self.decoder = nn.ModuleList(
            [ConvBlock(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))]
        )
        self.head = nn.Conv2d(widths[0], c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        x = self.encoder[0](x)
        for block in self.encoder[1:]:
            skips.append(x)
            x = block(F.avg_pool2d(x, 2))  # (B, width * 2**level, N / 2**level, N / 2**level)
        for block in self.decoder:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


class Translator:
    """Sub-pixel translation between a group's patches (N×N) and its canvas (L×L), by the Fourier
    shift theorem (exact for band-limited content; bilinear interpolation would blur every pass).

    A patch with offset (dx, dy) from the group centre covers canvas pixels
    ``(L - N)/2 + (dy, dx) + (a, b)``; L leaves room for the largest offset.
    """

    def __init__(self, N: int):
        self.N = N

    def canvas_size(self, offsets: torch.Tensor) -> int:
        # even margin on both sides, plus a few pixels so the shifted content does not wrap around
        return self.N + 2 * int(math.ceil(float(offsets.abs().max()))) + 8

    @staticmethod
    def _shift(x: torch.Tensor, offsets: torch.Tensor, sign: float) -> torch.Tensor:
        """Move the content of x (..., L, L) by sign * offsets (..., 2) = (dx, dy) pixels."""
        L = x.shape[-1]
        k = torch.fft.fftfreq(L, device=x.device, dtype=offsets.dtype)
        dx, dy = offsets[..., 0, None, None], offsets[..., 1, None, None]
        ramp = torch.exp(-2j * math.pi * sign * (k[None, :] * dx + k[:, None] * dy))  # g(u) = f(u - d)
        return torch.fft.ifft2(torch.fft.fft2(x) * ramp)

    def to_canvas(self, patches: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor,
                  L: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A group's weighted patches summed on its canvas, and the summed weights.

        patches (B, C, N, N) complex, offsets (B, C, 2), weight (N, N) real >= 0
        -> (sum w O, sum w), each (B, L, L) complex. Their ratio is the group's object.
        """
        m = (L - self.N) // 2
        pad = (m, L - self.N - m, m, L - self.N - m)
        w = weight.to(patches.dtype).expand_as(patches)
        values = self._shift(F.pad(patches * w, pad), offsets, 1.0).sum(dim=1)
        weights = self._shift(F.pad(w, pad), offsets, 1.0).sum(dim=1)
        return values, weights

    def from_canvas(self, canvas: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Each member's view of a canvas. (B, L, L) complex -> (B, C, N, N) complex."""
        m = (canvas.shape[-1] - self.N) // 2
        moved = self._shift(canvas[:, None], offsets, -1.0)  # (B, C, L, L)
        return moved[..., m:m + self.N, m:m + self.N]

    def average(self, patches: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Replace each patch by the group's weighted average seen from its own position.

        Sums are moved back before dividing (a ratio taken on the canvas blows up where the
        weights vanish, and a Fourier shift would spread that into the patch), and where the
        summed weight is below ``_BLEND`` each patch keeps mostly its own value.
        """
        if patches.shape[1] == 1:
            return patches
        values, weights = self.to_canvas(patches, offsets, weight, self.canvas_size(offsets))
        num = self.from_canvas(values, offsets) + _BLEND * patches
        return num / (self.from_canvas(weights, offsets).real + _BLEND)


class DiffractionToObject(nn.Module):
    """The inference network: measured amplitudes of a group -> complex object patches.

    ``forward(amplitudes, offsets)``: amplitudes (B, C, N, N) float, sqrt(counts) / s as stored
    in ``diffraction`` (fftshifted); offsets (B, C, 2) float, (dx, dy) of each pattern from its
    group centre, pixels. Returns (B, C, N, N) complex64 transmissions: amplitude in (0, 1)
    (sigmoid: a passive specimen absorbs), phase = back-projection phase + a correction in
    (-pi, pi) (tanh).
    """

    def __init__(self, cfg: ModelConfig, probe: torch.Tensor):
        super().__init__()
        if cfg.N % (2 ** cfg.depth):
            raise ValueError(f"train.depth: N = {cfg.N} is not divisible by 2**depth = {2 ** cfg.depth}")
        self.cfg = cfg
        probe = probe.to(torch.complex64)
        far = physics.far_field(probe)  # (N, N), zero frequency at [0, 0]
        mag = far.abs()
        intensity = probe.abs() ** 2
        self.register_buffer("probe", probe)
        self.register_buffer("far_phase", torch.where(mag > _PUPIL * mag.max(), far / mag.clamp_min(1e-12),
                                                      torch.zeros_like(far)))
        self.register_buffer("inverse_probe", probe.conj() / (intensity + _ALPHA * intensity.max()))
        self.register_buffer("weight", intensity / intensity.max())  # where each pattern says something
        self.translator = Translator(cfg.N)
        self.unet = UNet(c_in=5, c_out=3, width=cfg.width, depth=cfg.depth)
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
        shared = self.translator.average(own, offsets, self.weight)  # the group's estimate, per member
        feats = torch.stack([own.real, own.imag, shared.real, shared.imag,
                             self.weight.expand(B, C, N, N)], dim=2)  # (B, C, 5, N, N)
        out = self.unet(feats.reshape(B * C, 5, N, N)).reshape(B, C, 3, N, N)
        amp = torch.sigmoid(_logit(_AMPLITUDE_START) + out[:, :, 0])
        # a per-pixel gate on the back-projected phase lets the net drop it where it is noise
        gate = torch.sigmoid(_logit(_GATE_START) + out[:, :, 2])
        phase = gate * torch.angle(shared) + math.pi * torch.tanh(out[:, :, 1])
        # gridsize > 1: one object per group, so every member shows the group's weighted average
        return self.translator.average(torch.polar(amp, phase), offsets, self.weight)


def poisson_nll(amplitude: torch.Tensor, counts: torch.Tensor, scale: float, eps: float = 1e-6) -> torch.Tensor:
    """Mean Poisson negative log-likelihood of ``counts`` given predicted amplitudes.

    lambda = (scale * amplitude)^2; NLL = lambda - counts * log(lambda), averaged over pixels
    (log(counts!) does not depend on the model and is dropped).
    """
    lam = (scale * amplitude) ** 2
    return (lam - counts * torch.log(lam + eps)).mean()


class PtychoPINN(nn.Module):
    """The training model: network, the overlap constraint, and the physics.

    ``forward(amplitudes, offsets, counts=None)`` returns (patches, predicted amplitudes, loss);
    the network's patches (for gridsize > 1 one shared object per group, averaged on its canvas
    with probe-intensity weights) go through the probe and the far-field model.
    """

    def __init__(self, cfg: ModelConfig, probe: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.net = DiffractionToObject(cfg, probe)

    def forward(self, amplitudes: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor | None = None):
        patches = self.net(amplitudes, offsets)  # (B, C, N, N) complex, group-consistent
        predicted = physics.diffraction_amplitude(patches, self.net.probe)  # (B, C, N, N)
        loss = None if counts is None else poisson_nll(predicted, counts, self.cfg.intensity_scale)
        return patches, predicted, loss
