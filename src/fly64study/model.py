"""What every PINN of the study shares: its configuration, the group canvas and the likelihood.

  ``ModelConfig``  what a bundle records to rebuild a network: N, gridsize, intensity scale, which
                   network (:mod:`fly64study.networks`) and that network's own settings
  ``Placement``    sub-pixel placement of a group's patches on one canvas, and back (Fourier shifts):
                   the overlap constraint of gridsize > 1 (upstream's ``object.big``)
  ``poisson_nll``  negative log-likelihood of the counts given predicted amplitudes

The networks themselves live in :mod:`fly64study.ptychopinn` (the published PtychoPINN) and
:mod:`fly64study.bp_unet` (the study's back-projection U-Net); :mod:`fly64study.networks` names them
and wraps either in the training model (network -> canvas -> × probe -> |F| -> NLL).

Reference: Hoidn, Mishra, Mehta, "Physics constrained unsupervised deep learning for rapid,
high resolution scanning coherent diffraction reconstruction", Sci. Rep. 13, 22789 (2023).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

BLEND = 0.01  # weight (of a peak-normalised probe intensity) below which a patch keeps its own value


def fft_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (n >= 1). MKL's FFT is 2-5x slower on a length with a larger
    prime factor: 32 transforms took 5.2 ms at 106 = 2 * 53 and 1.6 ms at 108 (bench/LOG.md)."""
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
    intensity_scale: float  # s: expected counts = (s * amplitude)^2
    network: str  # which network: a key of fly64study.networks.NETWORKS
    settings: dict = field(default_factory=dict)  # that network's own settings (params: train.<network>)

    @property
    def C(self) -> int:
        return self.gridsize * self.gridsize

    def to_json(self) -> dict:
        return asdict(self)


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
        summed weight is below ``BLEND`` each patch keeps mostly its own value.
        """
        if self._norm is None:
            self._norm = self._seen_from_members(self._weights_hat).real + BLEND
        return (self._seen_from_members(self._sum_hat(patches)) + BLEND * patches) / self._norm


def poisson_nll(amplitude: torch.Tensor, counts: torch.Tensor, scale: float, eps: float = 1e-6) -> torch.Tensor:
    """Mean Poisson negative log-likelihood of ``counts`` given predicted amplitudes.

    lambda = (scale * amplitude)^2; NLL = lambda - counts * log(lambda), averaged over pixels
    (log(counts!) does not depend on the model and is dropped).
    """
    lam = (scale * amplitude) ** 2
    return (lam - counts * torch.log(lam + eps)).mean()
