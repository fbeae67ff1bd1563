"""PNG figures a person would rather look at than read (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fly64study.contract import Dataset  # noqa: E402
from fly64study.files import atomic_path  # noqa: E402

# PNG text chunks hold the matplotlib version only: no date, so the bytes are reproducible.
_PNG_META = {"Software": None}


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=_PNG_META)
    plt.close(fig)


def plot_phase_c(path: str | Path, train: Dataset, test: Dataset) -> None:
    """Probe (amplitude, phase), object (amplitude, phase) with the scan split, and one pattern."""
    probe, obj = train.probeGuess, train.objectGuess
    meta = train.metadata
    fig, ax = plt.subplots(2, 3, figsize=(13, 8.5))
    im = ax[0, 0].imshow(np.abs(probe), cmap="magma")
    ax[0, 0].set_title(f"probe amplitude (D90 = {meta['probe_diameter90_px']:.1f} px)")
    fig.colorbar(im, ax=ax[0, 0])
    im = ax[0, 1].imshow(np.angle(probe) * (np.abs(probe) > 0.05 * np.abs(probe).max()), cmap="twilight")
    ax[0, 1].set_title("probe phase, rad (where |P| > 5% of max)")
    fig.colorbar(im, ax=ax[0, 1])
    pattern = train.diffraction[0] * meta["intensity_scale"]
    im = ax[0, 2].imshow(np.log10(1 + pattern**2), cmap="viridis")
    ax[0, 2].set_title(f"pattern 0: log10(1 + counts), dose {meta['nphotons']:g}")
    fig.colorbar(im, ax=ax[0, 2])
    im = ax[1, 0].imshow(np.abs(obj), cmap="gray")
    ax[1, 0].set_title("object amplitude")
    fig.colorbar(im, ax=ax[1, 0])
    im = ax[1, 1].imshow(np.angle(obj), cmap="twilight")
    ax[1, 1].set_title("object phase, rad")
    fig.colorbar(im, ax=ax[1, 1])
    ax[1, 2].imshow(np.abs(obj), cmap="gray", alpha=0.5)
    ax[1, 2].plot(train.xcoords, train.ycoords, ".", ms=2, label=f"train ({train.n})")
    ax[1, 2].plot(test.xcoords, test.ycoords, ".", ms=2, label=f"test ({test.n})")
    ax[1, 2].legend(loc="upper right", fontsize=8)
    ax[1, 2].set_title("scan positions (patch centres)")
    fig.suptitle(f"phase C, dose {meta['dose_label']}: {meta['nphotons']:g} photons per pattern, N = {meta['N']}")
    fig.tight_layout()
    _save(fig, Path(path))


def plot_losses(path: str | Path, history: list[dict], *, title: str) -> None:
    """Training and validation loss per epoch (Poisson NLL per pixel, constant terms dropped)."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="training")
    ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation (held-out positions)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Poisson NLL per pixel")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    _save(fig, Path(path))
