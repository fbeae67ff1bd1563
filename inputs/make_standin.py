"""Write inputs/standin_upstream.npz: a stand-in for a real sample, in the upstream PtychoPINN NPZ layout.

No reconstruction of real data is at hand offline, so this file stands in for one, built to
have what real ones have and the study's own synthetic sample lacks (``profiles/real.yaml``):

- objectGuess: complex128, non-square (352 x 448), amplitude up to about 1.3 (a reconstruction's
  arbitrary scale), texture from two photographs shipped with scikit-image (``camera``: phase,
  ``coins``: amplitude; both without copyright restrictions) instead of the study's random discs;
- probeGuess: complex128, 128 x 128 (not design.N), off-centre in its array, a large and strongly
  curved focus: an annular pupil with strong defocus, astigmatism and coma;
- extra upstream keys (xcoords, ycoords, scan_index, diff3d), which the study ignores.

Deterministic: run ``python inputs/make_standin.py`` to rewrite the same bytes.
"""
import io
import zipfile
from pathlib import Path

import numpy as np
from skimage import data, transform

SHAPE = (352, 448)
P = 128


def standin_object() -> np.ndarray:
    phase_img = data.camera().astype(np.float64) / 255.0
    phase = transform.resize(phase_img[40:480, :], SHAPE, order=3, anti_aliasing=True)
    amp_img = data.coins().astype(np.float64) / 255.0
    amp = transform.resize(amp_img, SHAPE, order=3, anti_aliasing=True)
    amplitude = 0.75 + 0.55 * (amp - amp.min()) / (amp.max() - amp.min())  # 0.75 .. 1.30
    return amplitude * np.exp(1j * 2.2 * (phase - phase.mean()))


def standin_probe() -> np.ndarray:
    k = np.fft.fftfreq(P)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    kmax = 0.2
    r = np.hypot(kx, ky) / kmax
    pupil = ((r <= 1) & (r >= 0.25)).astype(np.float64)
    theta = np.arctan2(ky, kx)
    aberration = 8.0 * r**2 + 3.0 * r**2 * np.cos(2 * theta) + 1.5 * (3 * r**3 - 2 * r) * np.cos(theta)
    probe = np.fft.fftshift(np.fft.ifft2(pupil * np.exp(1j * aberration)))
    probe = np.roll(probe, (5, -7), axis=(0, 1))  # off-centre, as a cropped reconstruction's often is
    return probe / np.sqrt((np.abs(probe) ** 2).sum()) * 40.0


def main() -> None:
    rng = np.random.default_rng(2026)
    n = 64
    out = Path(__file__).with_name("standin_upstream.npz")
    arrays = dict(
        objectGuess=standin_object().astype(np.complex128),
        probeGuess=standin_probe().astype(np.complex128),
        xcoords=rng.uniform(64, SHAPE[1] - 64, n), ycoords=rng.uniform(64, SHAPE[0] - 64, n),
        scan_index=np.zeros(n, np.int64), diff3d=rng.poisson(3.0, (16, 64, 64)).astype(np.float32),
    )
    # np.savez_compressed's layout, with a fixed member date so that a rerun gives the same bytes
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue(),
                        compress_type=zipfile.ZIP_DEFLATED)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
