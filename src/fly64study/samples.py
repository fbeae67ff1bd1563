"""Real samples in: the probe and object of a base sample file, made fit for the study.

Two layouts are read (``generate.base_sample``):

- an NPZ in the upstream PtychoPINN layout: ``probeGuess`` and ``objectGuess`` (complex, any
  precision; other keys such as ``xcoords``, ``ycoords``, ``diff3d`` are ignored), read without
  pickle;
- a Ptychodus product HDF5 (``ptychodus.api.io.save_product``'s layout): the first probe mode
  of ``probe`` (2-D to 4-D: OPR mode, incoherent mode, height, width), the first layer of
  ``object`` (2-D or 3-D), and the object's pixel size and the photon energy, which replace
  ``generate.geometry``'s declared values.

Then two stated rules make any such pair fit the study (:func:`fit_probe`, :func:`normalise_object`);
what each did is returned as a record for phase C's ``_metadata``. Bad input raises
:class:`~fly64study.contract.ContractError` naming the file, the array and the fix, before anything
is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fly64study.contract import ContractError, read_npz
# The N x N window must hold this share of the probe's intensity; below it the window would cut
# the probe (its far field would then ring at the window's edge), and the fix is a larger N.
MIN_KEPT = 0.9


@dataclass(frozen=True)
class Sample:
    probe: np.ndarray  # (N, N) complex64, not yet normalised (physics.normalise_probe does that)
    obj: np.ndarray  # (H, W) complex64, maximum amplitude 1
    record: dict  # what was read and what the rules did, for _metadata
    geometry: dict  # pixel_size_m, photon_energy_eV (and detector_distance_m) from the file; {} if none


def load_sample(path: str | Path, N: int) -> Sample:
    """Read a base sample (NPZ or Ptychodus product), fit its probe to N x N and normalise its object."""
    path = Path(path)
    if path.suffix == ".npz":
        probe, obj = _from_npz(path)
        geometry: dict = {}
    elif path.suffix in (".h5", ".hdf5"):
        probe, obj, geometry = _from_product(path)
    else:
        raise ContractError(f"{path}: unknown sample format; use an NPZ (probeGuess, objectGuess) or a "
                            "Ptychodus product (.h5, .hdf5)")
    for key, arr in (("probe", probe), ("object", obj)):
        if arr.ndim != 2:
            raise ContractError(f"{path}: {key}: expected a 2-D array, got shape {arr.shape}; a {key} is an image")
        if not np.iscomplexobj(arr):
            raise ContractError(f"{path}: {key}: expected a complex array, got dtype {arr.dtype.name}")
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ContractError(f"{path}: {key}: {int(bad.sum())} non-finite values (NaN or inf); "
                                f"replace them (e.g. by the {key}'s border value) or crop them away")
    record = {"path": str(path), "probe_shape": list(probe.shape), "object_shape": list(obj.shape),
              "dtype": {"probe": probe.dtype.name, "object": obj.dtype.name}}
    if min(obj.shape) < 2 * N:
        raise ContractError(
            f"{path}: object: {obj.shape[0]}×{obj.shape[1]} px is too small to scan an N={N} probe; each side "
            f"needs at least 2·N = {2 * N} px (the train/test split gives each half a probe's width of scan "
            f"range): use a larger object or a smaller design.N")
    try:
        fitted, record["probe_fit"] = fit_probe(probe, N)
        normalised, record["object_normalisation"] = normalise_object(obj)
    except ContractError as err:
        raise ContractError(f"{path}: {err}") from None
    return Sample(probe=fitted, obj=normalised, record=record, geometry=geometry)


def fit_probe(probe: np.ndarray, N: int) -> tuple[np.ndarray, dict]:
    """An N x N probe as it is; another size: the N x N window of ``probe`` centred (to the pixel,
    halves rounded up) on its intensity centroid, zero-padded where the window leaves the array.

    A crop or pad in real space keeps the pixel size, so the object's sampling is unchanged; what
    changes is the detector's: the far field of N px of size dx has pixels of λz / (N dx). An
    integer shift only moves the probe in its frame. Refused when the window keeps less than
    :data:`MIN_KEPT` of the intensity.
    """
    intensity = np.abs(probe.astype(np.complex128)) ** 2
    total = float(intensity.sum())
    if not total > 0:
        raise ContractError("probe: zero everywhere; a probe must carry intensity")
    if probe.shape == (N, N):
        return probe.astype(np.complex64), {"rule": "N×N: kept as it is", "from_shape": [N, N], "kept_intensity": 1.0}
    centre = [int(np.floor(float((intensity.sum(axis=1 - a) * np.arange(probe.shape[a])).sum()) / total + 0.5))
              for a in (0, 1)]
    out = np.zeros((N, N), dtype=np.complex64)
    src, dst = [], []
    for a in (0, 1):
        start = centre[a] - N // 2  # the centroid lands on pixel N/2, the study's probe centre
        lo, hi = max(start, 0), min(start + N, probe.shape[a])
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[dst[0], dst[1]] = probe[src[0], src[1]]
    kept = float(intensity[src[0], src[1]].sum()) / total
    record = {"rule": f"N×N window centred on the intensity centroid (crop or zero-pad, pixel size kept); "
                      f"it must keep >= {MIN_KEPT:g} of |P|²",
              "from_shape": list(probe.shape), "centroid_px": centre, "kept_intensity": kept}
    if kept < MIN_KEPT:
        raise ContractError(
            f"probe: an N={N} window around its centroid keeps only {kept:.1%} of its intensity (at least "
            f"{MIN_KEPT:.0%} needed): the probe is mostly outside the window; raise design.N (the detector "
            f"size) or give a more focused probe")
    return out, record


def normalise_object(obj: np.ndarray) -> tuple[np.ndarray, dict]:
    """Divide the object by its largest amplitude, so that its transmission peaks at 1.

    Why: a reconstructed object is known only up to a scale (it trades with the probe's), and the
    PtychoPINN's amplitude is a sigmoid bounded by 1, so an object brighter than one could not be
    represented at all. Dividing by the maximum (not a percentile, which would need clipping) keeps
    every relative contrast; the phase is left as it is. The scale is recorded.
    """
    amplitude = np.abs(obj.astype(np.complex128))
    scale = float(amplitude.max())
    if not scale > 0:
        raise ContractError("object: zero everywhere; an object must transmit")
    return (obj.astype(np.complex128) / scale).astype(np.complex64), {
        "rule": "divided by its maximum amplitude (a reconstruction's scale is arbitrary; the PINN's amplitude <= 1)",
        "max_amplitude_before": scale}


def _from_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    arrays, _ = read_npz(path)
    missing = [k for k in ("probeGuess", "objectGuess") if k not in arrays]
    if missing:
        raise ContractError(f"{path}: {', '.join(missing)}: missing; an upstream-layout NPZ holds probeGuess and "
                            f"objectGuess (found: {sorted(arrays)})")
    return arrays["probeGuess"], arrays["objectGuess"]


def _from_product(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            arrays, attrs = {}, {}
            for key, max_ndim in (("probe", 4), ("object", 3)):
                ds = h5.get(key)
                if not isinstance(ds, h5py.Dataset):
                    raise ContractError(f"{path}: {key}: missing; a Ptychodus product holds 'probe' and 'object' "
                                        "datasets (write it with ptychodus.api.io.save_product)")
                if not 2 <= ds.ndim <= max_ndim:
                    raise ContractError(f"{path}: {key}: expected 2-D to {max_ndim}-D, got shape {ds.shape}")
                arrays[key] = ds[(0,) * (ds.ndim - 2)]  # the first OPR / incoherent probe mode, object layer
                attrs[key] = dict(ds.attrs)
            geometry = {}
            pixels = {key: [attrs[key].get(f"pixel_{side}_m") for side in ("width", "height")]
                      for key in ("object", "probe")}
            width, height = pixels["object"]
            if (width is None) != (height is None):
                raise ContractError(f"{path}: object: has only one of pixel_width_m, pixel_height_m; give both")
            if width is not None:
                if not np.isclose(float(width), float(height), rtol=1e-6, atol=0):
                    raise ContractError(f"{path}: object: pixels of {width} × {height} m are not square; the study "
                                        "samples square pixels: resample the product first")
                # Ptychodus lets the probe's pixels differ from the object's; the study samples both alike
                if any(v is not None and not np.isclose(float(v), float(width), rtol=1e-6, atol=0) for v in pixels["probe"]):
                    raise ContractError(f"{path}: probe: pixels of {pixels['probe'][0]} × {pixels['probe'][1]} m differ "
                                        f"from the object's {width} m; resample the probe to the object's pixel first")
                geometry["pixel_size_m"] = float(width)
            for attr, key in (("photon_energy_eV", "photon_energy_eV"), ("probe_energy_eV", "photon_energy_eV"),
                              ("detector_object_distance_m", "detector_distance_m")):
                if attr in h5.attrs and key not in geometry:
                    geometry[key] = float(h5.attrs[attr])
    except ContractError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ContractError(f"{path}: not a readable Ptychodus product ({type(err).__name__}: {err})") from None
    return arrays["probe"], arrays["object"], geometry
