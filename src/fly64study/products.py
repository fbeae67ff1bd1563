"""Standard products out: a reconstruction as a Ptychodus product HDF5.

The layout is the one ``ptychodus.api.io.save_product`` writes and ``load_product`` reads
(Ptychodus 1.7): file attributes for the metadata; ``probe`` (OPR mode, incoherent mode, y, x),
``object`` (layer, y, x) with pixel sizes and centre in metres; ``probe_position_indexes`` and
``probe_position_{x,y}_m``; ``loss_epochs`` / ``loss_values``. It is written here with h5py
rather than by Ptychodus, whose package pulls an AI-agent stack into every stage; the test suite
reads our files back with Ptychodus's own ``load_product``.

Positions: the object's centre is at (0, 0) m. The study puts the probe's pixel N/2 on a scan
position (``simulate.extract_patches``); Ptychodus puts its pixel (N - 1)/2 there and reads
object pixel ``x_m / dx + (W - 1)/2``, so ``x_m = dx * (x - W/2)`` gives Ptychodus the study's
patch offset ``x - N/2`` (tested with Ptychodus's own ``resolve_patch_bounds``). Up to float
round-off through metres: at a whole-pixel position Ptychodus may take the corner one pixel
lower with a shift of 1 - 1e-14. Files are byte-reproducible (no HDF5 timestamps), atomic.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from fly64study.contract import ContractError
from fly64study.files import atomic_h5
from fly64study.models import STEMS  # model -> file name stem (a further seed adds _seed<s>)



def seed_suffix(seed: int | None, first: int | None) -> str:
    """How a further training seed is named beside the first (loss-table columns, product files)."""
    return "" if seed == first else f"_seed{seed}"


def positions_m(coords: np.ndarray, size: int, pixel_size_m: float) -> np.ndarray:
    """Object-pixel coordinates (patch centres) -> Ptychodus's metres (module docstring: the half pixel)."""
    return pixel_size_m * (np.asarray(coords, dtype=np.float64) - size / 2)


def write_product(path: str | Path, *, name: str, comments: str, probe: np.ndarray, obj: np.ndarray,
                  xcoords: np.ndarray, ycoords: np.ndarray, geometry: dict, probe_photon_count: float,
                  losses: Sequence[tuple[int, float]] = ()) -> None:
    """One reconstruction as a Ptychodus product: ``probe`` (N, N), ``obj`` (H, W) in the scan's
    frame, positions in object pixels, ``geometry`` with pixel_size_m, photon_energy_eV and
    detector_distance_m, and the loss history as (epoch, value) pairs."""
    dx = float(geometry["pixel_size_m"])
    H, W = obj.shape
    with atomic_h5(path, libver="earliest", track_order=False) as h5:
        attrs = {"name": name, "comments": comments,
                 "detector_object_distance_m": float(geometry["detector_distance_m"]),
                 "photon_energy_eV": float(geometry["photon_energy_eV"]),
                 "probe_photon_count": float(probe_photon_count), "exposure_time_s": 0.0,
                 "mass_attenuation_m2_per_kg": 0.0, "tomography_angle_deg": 0.0,
                 "focus_object_distance_m": 0.0, "tilt_angle_deg": 0.0, "far_field": True}
        for key, value in attrs.items():
            h5.attrs[key] = value

        def dataset(key, data):
            return h5.create_dataset(key, data=data, track_times=False)

        dataset("probe_position_indexes", np.arange(len(xcoords), dtype=np.int64))
        dataset("probe_position_x_m", positions_m(xcoords, W, dx))
        dataset("probe_position_y_m", positions_m(ycoords, H, dx))
        p = dataset("probe", np.asarray(probe, dtype=np.complex64)[None, None])
        p.attrs["pixel_width_m"] = dx
        p.attrs["pixel_height_m"] = dx
        o = dataset("object", np.asarray(obj, dtype=np.complex64)[None])
        o.attrs["center_x_m"] = 0.0
        o.attrs["center_y_m"] = 0.0
        o.attrs["pixel_width_m"] = dx
        o.attrs["pixel_height_m"] = dx
        dataset("object_layer_spacing_m", np.zeros(0, dtype=np.float64))
        dataset("loss_epochs", np.array([e for e, _ in losses], dtype=np.int64))
        dataset("loss_values", np.array([v for _, v in losses], dtype=np.float64))


def write_products(out_dir: str | Path, test, candidates, *, dose: str, view: str, probe_photon_count: float,
                   firsts: dict[str, int | None]) -> None:
    """Every completed candidate of a comparison (:class:`fly64study.compare.Candidate`) as
    ``<out_dir>/<stem>[_seed<s>].h5`` (older ``.h5`` files there are removed first); ``firsts``
    names each model's first seed, which keeps the plain name. The probe is the candidate's own
    (pty-chi's, which differs where it refines the probe), else the test split's known one. Only
    the test split is reconstructed: the object is flat outside its scanned area."""
    geometry = test.metadata.get("source", {}).get("geometry")
    if geometry is None:
        raise ContractError("test split: _metadata.source.geometry: missing (data generated before products "
                            "existed); rerun `dvc repro` from generate")
    for stale in Path(out_dir).glob("*.h5"):
        stale.unlink()
    for cand in candidates:
        if cand.field is None:
            continue
        suffix = seed_suffix(cand.seed, firsts.get(cand.model))
        path = Path(out_dir) / f"{STEMS[cand.model]}{suffix}.h5"
        comments = json.dumps({"study": "fly64 dose/overlap", "model": cand.model, "seed": cand.seed,
                               "dose": dose, "view": view, "source": cand.note,
                               "losses": cand.loss_name or None}, sort_keys=True)
        write_product(path, name=f"{cand.model} {view} {dose}" + (f" seed {cand.seed}" if suffix else ""),
                      comments=comments, probe=test.probeGuess if cand.probe is None else cand.probe,
                      obj=cand.field, xcoords=test.xcoords, ycoords=test.ycoords, geometry=geometry,
                      probe_photon_count=probe_photon_count, losses=cand.losses)
