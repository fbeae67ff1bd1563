"""PtychoPINN in PyTorch: an encoder/decoder from diffraction amplitudes to object patches, trained
through the known far-field forward model with a Poisson likelihood (no ground truth).

Parts before the whole:
  ``ConvBlock``            two 3×3 convolutions with SiLU
  ``UNet``                 encoder/decoder with skip connections (its input lives in object space)
  ``Placement``            sub-pixel placement of a group's patches on one canvas, and back (Fourier shifts)
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


def fft_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (n >= 1). MKL's FFT is 2-5x slower on a length with a larger
    prime factor: 32 transforms took 5.2 ms at 106 = 2 * 53 and 1.6 ms at 108 (bench/RESULTS.md)."""
    if n < 1:
        raise ValueError(f"fft_length: n = {n}; a length is at least 1")
    while True:
        rest = n
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return n
        n += 1


def canvas_length(N: int, extent: float) -> int:
    """The canvas side for a group of N×N patches whose offsets reach ``extent`` pixels from its
    centre: a margin on both sides, plus a few pixels so that shifted content does not wrap
    around, rounded up to a length the FFT is fast at."""
    return fft_length(N + 2 * int(math.ceil(extent)) + 8)


@dataclass(frozen=True)
class ModelConfig:
    N: int  # patch / detector size, pixels
    gridsize: int  # C = gridsize^2 patterns per group
    width: int  # channels of the first encoder level (doubling per level)
    depth: int  # down-sampling levels; N must be divisible by stride * 2**depth
    intensity_scale: float  # s: expected counts = (s * amplitude)^2
    stride: int = 1  # the U-Net runs at N / stride (space-to-depth in, depth-to-space out); 1 = full resolution
    skips: str = "concat"  # decoder joins a skip by "concat" (channels stacked) or "add" (projected, summed)

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
            raise ValueError(f"train.skips: {skips!r}; choose concat or add")
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


class Placement:
    """Sub-pixel placement of a batch of groups' patches (N×N) on their canvases (L×L), by the
    Fourier shift theorem (exact for band-limited content; bilinear interpolation would blur every
    pass). Built once per forward pass, it holds what every pass shares.

    A patch with offset (dx, dy) from its group centre covers canvas pixels
    ``m + (dy, dx) + (a, b)``, m = ⌊(L - N)/2⌋; L (:func:`canvas_length`, odd or even) leaves room
    for the batch's largest offset, so a batch is as costly as its widest group, and L (the period
    of the Fourier shift's interpolation) follows the batch. The canvas sum is
    kept in Fourier space: a shift is a product there, so moving a sum back to each member costs
    one inverse FFT per member and no round trip through the canvas.
    """

    def __init__(self, offsets: torch.Tensor, weight: torch.Tensor):
        """offsets (B, C, 2) float, (dx, dy) pixels; weight (N, N) real >= 0, a patch's confidence."""
        self.N = weight.shape[-1]
        self.L = L = canvas_length(self.N, float(offsets.abs().max()))
        self.m = (L - self.N) // 2
        k = torch.fft.fftfreq(L, device=offsets.device, dtype=offsets.dtype)
        # the ramp is separable: two L-point exponentials per patch, not L² (g(u) = f(u - d))
        ex = torch.exp(-2j * math.pi * k * offsets[..., 0, None])  # (B, C, L), along x
        ey = torch.exp(-2j * math.pi * k * offsets[..., 1, None])  # along y
        self.ramp = ey[..., :, None] * ex[..., None, :]  # (B, C, L, L)
        self.weight = weight
        w_hat = self._fft_padded(weight.to(self.ramp.dtype))  # (L, L): every member has the same weight
        self._weights_hat = (w_hat * self.ramp).sum(dim=1)  # (B, L, L), the canvas's summed weight
        self._norm = None  # the summed weight seen from each member, once a patch asks for it

    def _fft_padded(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.L - self.N - self.m
        return torch.fft.fft2(F.pad(x, (self.m, extra, self.m, extra)))

    def _sum_hat(self, patches: torch.Tensor) -> torch.Tensor:
        """Fourier transform of the canvas holding every member's weighted patch, (B, L, L)."""
        return (self._fft_padded(patches * self.weight) * self.ramp).sum(dim=1)

    def _seen_from_members(self, canvas_hat: torch.Tensor) -> torch.Tensor:
        """Each member's N×N view of a canvas given by its transform (B, L, L) -> (B, C, N, N)."""
        moved = torch.fft.ifft2(canvas_hat[:, None] * self.ramp.conj())
        return moved[..., self.m:self.m + self.N, self.m:self.m + self.N]

    def to_canvas(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A group's weighted patches summed on its canvas, and the summed weights.

        patches (B, C, N, N) complex -> (sum w O, sum w), each (B, L, L) complex. Their ratio is
        the group's object."""
        return torch.fft.ifft2(self._sum_hat(patches)), torch.fft.ifft2(self._weights_hat)

    def average(self, patches: torch.Tensor) -> torch.Tensor:
        """Replace each patch by the group's weighted average seen from its own position.

        Sums are moved back before dividing (a ratio taken on the canvas blows up where the
        weights vanish, and a Fourier shift would spread that into the patch), and where the
        summed weight is below ``_BLEND`` each patch keeps mostly its own value.
        """
        if self._norm is None:
            self._norm = self._seen_from_members(self._weights_hat).real + _BLEND
        return (self._seen_from_members(self._sum_hat(patches)) + _BLEND * patches) / self._norm


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
        if cfg.N % (cfg.stride * 2 ** cfg.depth):
            raise ValueError(f"train.depth: N = {cfg.N} is not divisible by stride * 2**depth = "
                             f"{cfg.stride * 2 ** cfg.depth}")
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
        self.unet = UNet(c_in=5, c_out=3, width=cfg.width, depth=cfg.depth, stride=cfg.stride, skips=cfg.skips)
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
        # a per-pixel gate on the back-projected phase lets the net drop it where it is noise
        gate = torch.sigmoid(_logit(_GATE_START) + out[:, :, 2])
        phase = gate * torch.angle(shared) + math.pi * torch.tanh(out[:, :, 1])
        # gridsize > 1: one object per group, so every member shows the group's weighted average
        patches = torch.polar(amp, phase)
        return placement.average(patches) if placement else patches


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
