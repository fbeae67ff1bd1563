"""PNG figures a person would rather look at than read (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fly64study.contract import Dataset  # noqa: E402
from fly64study.files import atomic_path  # noqa: E402
from fly64study.models import COLOURS, NAMES  # noqa: E402

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


def plot_losses(path: str | Path, histories: dict[int, list[dict]], *, title: str) -> None:
    """Training and validation loss per epoch (Poisson NLL per pixel, constant terms dropped), one
    colour per training seed; a hollow marker where the learning rate was cut after that epoch."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (seed, history) in enumerate(histories.items()):
        epochs = [h["epoch"] for h in history]
        colour = f"C{i}"
        ax.plot(epochs, [h["train_loss"] for h in history], "o-", color=colour, alpha=0.5,
                label=f"training, seed {seed}")
        ax.plot(epochs, [h["val_loss"] for h in history], "s-", color=colour,
                label=f"validation (held-out positions), seed {seed}")
        cuts = [h for h, nxt in zip(history, history[1:]) if nxt.get("lr", 0) < h.get("lr", 0)]
        ax.plot([h["epoch"] for h in cuts], [h["val_loss"] for h in cuts], "s", color="white",
                markeredgecolor=colour, markersize=4)
    ax.set_xlabel("epoch")
    ax.set_ylabel("Poisson NLL per pixel")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, Path(path))


def plot_comparison(path: str | Path, aligned: dict, models: list[str], *, title: str) -> None:
    """Ground truth and each aligned reconstruction (amplitude, phase) with their error maps.

    ``aligned`` maps a model name to a :class:`fly64study.metrics.Aligned`; a model of ``models``
    missing from it (failed upstream) gets an empty column.
    """
    ref = next(iter(aligned.values()), None)
    aspect = ref.truth_phase.shape[0] / ref.truth_phase.shape[1] if ref is not None else 0.5
    fig, ax = plt.subplots(4, 1 + len(models), figsize=(3.6 * (1 + len(models)) + 1.2, 4 * (3.6 * aspect + 0.5) + 0.6),
                           squeeze=False)
    for a in ax.ravel():
        a.set_xticks([])
        a.set_yticks([])
    if ref is not None:
        amp_lim = (ref.truth_amplitude.min(), ref.truth_amplitude.max())
        ph_lim = (ref.truth_phase.min(), ref.truth_phase.max())
        im_amp = ax[0, 0].imshow(ref.truth_amplitude, cmap="gray", vmin=amp_lim[0], vmax=amp_lim[1])
        ax[0, 0].set_title("ground truth")
        ax[1, 0].imshow(ref.truth_phase, cmap="viridis", vmin=ph_lim[0], vmax=ph_lim[1])
        ax[2, 0].set_visible(False)
        ax[3, 0].set_visible(False)
    ax[0, 0].set_ylabel("amplitude")
    ax[1, 0].set_ylabel("phase, rad")
    for j, model in enumerate(models, start=1):
        al = aligned.get(model)
        ax[0, j].set_title(model if al is not None else f"{model}: failed")
        if al is None:
            continue
        ax[0, j].imshow(al.amplitude, cmap="gray", vmin=amp_lim[0], vmax=amp_lim[1])
        im_ph = ax[1, j].imshow(al.phase, cmap="viridis", vmin=ph_lim[0], vmax=ph_lim[1])
        im_ea = ax[2, j].imshow(al.amplitude - al.truth_amplitude, cmap="RdBu_r", vmin=-0.2, vmax=0.2)
        im_ep = ax[3, j].imshow(al.phase - al.truth_phase, cmap="RdBu_r", vmin=-0.5, vmax=0.5)
        ax[2, j].set_title(f"amplitude error (MAE {np.mean(np.abs(al.amplitude - al.truth_amplitude)):.3f})", fontsize=9)
        ax[3, j].set_title(f"phase error (MAE {np.mean(np.abs(al.phase - al.truth_phase)):.3f} rad)", fontsize=9)
    if ref is not None:
        fig.colorbar(im_amp, ax=ax[0, :].tolist(), shrink=0.8)
        fig.colorbar(im_ph, ax=ax[1, :].tolist(), shrink=0.8)
        fig.colorbar(im_ea, ax=ax[2, :].tolist(), shrink=0.8)
        fig.colorbar(im_ep, ax=ax[3, :].tolist(), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    _save(fig, Path(path))


def plot_frc(path: str | Path, rows: list[dict], *, threshold: float, title: str) -> None:
    """FRC curves against the truth per component (aligned level, solid; fixed frame, dotted),
    with the 1/2-bit threshold and the resolution threshold (rows: ``frc_curves.csv``)."""
    comps = sorted({r["component"] for r in rows}, key=lambda c: c != "phase")
    fig, ax = plt.subplots(1, max(len(comps), 1), figsize=(5.5 * max(len(comps), 1), 4), squeeze=False)
    for j, comp in enumerate(comps):
        a = ax[0, j]
        for model in NAMES:
            for level, style in (("aligned", "-"), ("fixed-frame", ":")):
                pts = [r for r in rows if r["model"] == model and r["component"] == comp and r["alignment"] == level]
                if pts:
                    a.plot([r["frequency"] for r in pts], [r["frc"] for r in pts], style, color=COLOURS[model],
                           label=f"{model} ({level})")
        half = [r for r in rows if r["component"] == comp and r["alignment"] == "aligned"]
        if half:
            model0 = half[0]["model"]
            pts = [r for r in half if r["model"] == model0]
            a.plot([r["frequency"] for r in pts], [r["half_bit"] for r in pts], "k--", lw=0.8, label="1/2-bit")
        a.axhline(threshold, color="gray", lw=0.8, label=f"threshold {threshold:g}")
        a.set_xlabel("spatial frequency, cycles/pixel")
        a.set_ylabel(f"FRC ({comp})")
        a.set_ylim(-0.1, 1.02)
        a.grid(alpha=0.3)
    ax[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, Path(path))


_MARKERS = ("o", "s", "^", "D", "v")


def plot_report(folder: str | Path, summary: dict, models: tuple[str, ...]) -> None:
    """The report's figures: MS-SSIM against dose (per component and view), FRC resolution and
    phase RMSE against photons per pixel, the latter beside the shot-noise bound."""
    folder = Path(folder)
    jobs = summary["jobs"]
    views = sorted({c["view"] for c in jobs})

    def series(view: str, model: str, key: str, x: str = "nphotons"):
        pts = [(c[x], c["models"].get(model, {}).get(key)) for c in jobs if c["view"] == view]
        pts = sorted((a, b) for a, b in pts if b is not None)
        return [a for a, _ in pts], [b for _, b in pts]

    def spread(view: str, model: str, key: str) -> list[float] | None:
        """sd over seeds per dose (as ``series`` orders them), or None without several seeds."""
        rows = sorted((c["nphotons"], c["models"].get(model, {})) for c in jobs if c["view"] == view)
        sds = [m.get("sd", {}).get(key, 0.0) for _, m in rows if m.get(key) is not None]
        return sds if any(sds) else None

    fig, ax = plt.subplots(2, len(views), figsize=(4.8 * len(views), 7), squeeze=False, sharey="row")
    for i, comp in enumerate(("phase", "amplitude")):
        for j, view in enumerate(views):
            for model in models:
                xs, ys = series(view, model, f"ms_ssim_{comp}")
                ax[i, j].errorbar(xs, ys, yerr=spread(view, model, f"ms_ssim_{comp}"), fmt="o-", capsize=3,
                                  color=COLOURS.get(model), label=model)
            ax[i, j].set_xscale("log")
            ax[i, j].set_title(f"{view} view: {comp}")
            ax[i, j].set_xlabel("photons per pattern")
            ax[i, j].grid(alpha=0.3)
        ax[i, 0].set_ylabel(f"MS-SSIM ({comp})")
    ax[0, 0].legend()
    fig.tight_layout()
    _save(fig, folder / "ms_ssim_vs_dose.png")

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for j, view in enumerate(views):
        for model in models:
            xs, ys = series(view, model, "frc_resolution_phase", "photons_per_pixel_mean")
            ax[0].plot(xs, ys, _MARKERS[j % len(_MARKERS)] + "-", color=COLOURS.get(model), label=f"{model}, {view}")
            xs, ys = series(view, model, "rmse_phase", "photons_per_pixel_mean")
            ax[1].plot(xs, ys, _MARKERS[j % len(_MARKERS)] + "-", color=COLOURS.get(model), label=f"{model}, {view}")
    bound = sorted((c["photons_per_pixel_mean"], c["shot_noise_phase_bound_rad"]) for c in jobs
                   if c["shot_noise_phase_bound_rad"] is not None)
    ax[1].plot([b[0] for b in bound], [b[1] for b in bound], "k--", label="shot-noise bound 1/(2√n)")
    ax[0].set_ylabel("FRC 0.5 resolution, cycles/pixel (phase)")
    ax[0].axhline(0.5, color="gray", lw=0.8)
    ax[1].set_ylabel("phase RMSE, rad")
    ax[1].set_yscale("log")
    for a in ax:
        a.set_xscale("log")
        a.set_xlabel("incident photons per object pixel")
        a.grid(alpha=0.3)
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, folder / "frc_and_phase_error_vs_fluence.png")
