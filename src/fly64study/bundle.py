"""Model bundles ``wts.h5.zip``: content-hashed, byte-reproducible, never pickled.

A bundle is a zip with sorted members and a fixed date holding

    manifest.json                      format version, backend, models, SHA256 of every member
    <model>/weights.h5                 the model's state (parameters and buffers), h5py, no timestamps
    <model>/config.json                how to rebuild it (ModelConfig, dose, intensity scale, probe)

for the models ``autoencoder`` (the training model: network and physics) and ``diffraction_to_obj``
(the inference network: the published PtychoPINN or BP-UNet, as its config's ``model.network``
says). Format 1 (before 2026-12-07) held BP-UNet alone, its settings at the top of ``model``; it
still loads. Loading refuses absolute or ``..`` member paths, members the
manifest does not list, oversized members, a member whose SHA256 differs from the manifest,
and a bundle whose SHA256 differs from the one expected.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import h5py
import numpy as np
import torch

from fly64study.files import ZIP_EPOCH, atomic_path, sha256_file
from fly64study.model import ModelConfig
from fly64study.networks import Autoencoder, build_network

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: BP-UNet's settings in ``model`` itself (no network, no settings)
MODELS = ("autoencoder", "diffraction_to_obj")
MAX_MEMBER_BYTES = 1 << 30  # a member larger than this (uncompressed) is refused: zip bombs
MAX_MANIFEST_BYTES = 1 << 20


class BundleError(ValueError):
    """A bundle is malformed, tampered with, or not the one expected; the message says which."""


@dataclass(frozen=True)
class Bundle:
    manifest: dict
    configs: dict[str, dict]  # model name -> config
    states: dict[str, dict[str, torch.Tensor]]  # model name -> state dict


# ----------------------------------------------------------------------------- writing
def _h5_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w", libver="earliest", track_order=False) as h5:
        for key in sorted(state):
            h5.create_dataset(key, data=state[key].detach().cpu().numpy(), track_times=False)
    return buf.getvalue()


def write_bundle(path: str | Path, model: Autoencoder, *, dose: float, dose_label: str, extra: dict | None = None) -> str:
    """Write ``model`` as a bundle, atomically; return its SHA256."""
    cfg = model.cfg
    common = {"model": cfg.to_json(), "N": cfg.N, "gridsize": cfg.gridsize,
              "intensity_scale": cfg.intensity_scale, "dose": dose, "dose_label": dose_label, **(extra or {})}
    parts = {
        "autoencoder": ({"class": type(model).__name__, **common, "probe": {"dataset": "net.probe"}},
                        model.state_dict()),
        "diffraction_to_obj": ({"class": type(model.net).__name__, **common, "probe": {"dataset": "probe"}},
                               model.net.state_dict()),
    }
    members: dict[str, bytes] = {}
    for name, (config, state) in parts.items():
        probe = state[config["probe"]["dataset"]].numpy()
        config["probe"].update(shape=list(probe.shape), dtype=str(probe.dtype),
                               sha256=hashlib.sha256(np.ascontiguousarray(probe).tobytes()).hexdigest())
        members[f"{name}/config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
        members[f"{name}/weights.h5"] = _h5_bytes(state)
    manifest = {
        "format_version": FORMAT_VERSION,
        "backend": {"name": "pytorch", "torch": torch.__version__.split("+")[0]},
        "models": {name: {"class": parts[name][0]["class"], "weights": f"{name}/weights.h5",
                          "config": f"{name}/config.json"} for name in MODELS},
        "sha256": {m: hashlib.sha256(b).hexdigest() for m, b in members.items()},
    }
    members["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(members):
                info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, members[name])
    return sha256_file(path)


# ----------------------------------------------------------------------------- reading
def _check_member_name(name: str) -> None:
    p = PurePosixPath(name)
    if name.startswith("/") or "\\" in name or p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise BundleError(f"member {name!r}: absolute or parent ('..') paths are refused")


def _read_member(zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise BundleError(f"member {name!r}: {info.file_size} bytes uncompressed exceeds the limit of {limit}")
    try:
        with zf.open(info) as fh:
            data = fh.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError) as err:
        # RuntimeError: an "encrypted" flag; NotImplementedError: an unknown method or version
        raise BundleError(f"member {name!r} is corrupt ({type(err).__name__}: {err})") from None
    if len(data) > limit:
        raise BundleError(f"member {name!r}: more than {limit} bytes when decompressed")
    return data


def _state_from_h5(data: bytes, name: str) -> dict[str, torch.Tensor]:
    state = {}
    try:
        with h5py.File(io.BytesIO(data), "r") as h5:
            for key in h5:
                ds = h5[key]
                if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fciub":
                    raise BundleError(f"{name}: entry {key!r} is not a numeric array")
                if ds.nbytes > len(data):  # a compressed or unallocated dataset claiming more than the file holds
                    raise BundleError(f"{name}: entry {key!r} declares {ds.nbytes} bytes, more than the "
                                      f"{len(data)}-byte member holds")
                state[key] = torch.from_numpy(np.array(ds[()]))
    except BundleError:
        raise
    except Exception as err:  # noqa: BLE001 - h5py parsing hostile bytes may raise anything: a refusal
        raise BundleError(f"{name}: not a readable HDF5 file ({type(err).__name__}: {err})") from None
    return state


def read_bundle(path: str | Path, expected_sha256: str | None = None) -> Bundle:
    """Read and verify a bundle; nothing is unpickled."""
    path = Path(path)
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise BundleError(f"{path}: SHA256 {actual} differs from the expected {expected_sha256}")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, NotImplementedError, ValueError, EOFError) as err:
        raise BundleError(f"{path}: not a readable zip file ({type(err).__name__}: {err})") from None
    with zf:
        names = zf.namelist()
        for name in names:
            _check_member_name(name)
        if "manifest.json" not in names:
            raise BundleError(f"{path}: no manifest.json")
        try:
            manifest = json.loads(_read_member(zf, "manifest.json", MAX_MANIFEST_BYTES))
        except json.JSONDecodeError as err:
            raise BundleError(f"{path}: manifest.json is not valid JSON ({err})") from None
        if manifest.get("format_version") not in READABLE_VERSIONS:
            raise BundleError(f"{path}: format_version {manifest.get('format_version')!r}, expected one of "
                              f"{list(READABLE_VERSIONS)}")
        digests = manifest.get("sha256", {})
        unlisted = sorted(set(names) - set(digests) - {"manifest.json"})
        if unlisted:
            raise BundleError(f"{path}: member {unlisted[0]!r} is not listed in the manifest")
        members = {}
        for name, expected in sorted(digests.items()):
            _check_member_name(name)
            if name not in names:
                raise BundleError(f"{path}: member {name!r} listed in the manifest is missing")
            data = _read_member(zf, name, MAX_MEMBER_BYTES)
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise BundleError(f"{path}: member {name!r} has SHA256 {actual}, the manifest says {expected}")
            members[name] = data
    configs, states = {}, {}
    for model, entry in manifest.get("models", {}).items():
        configs[model] = json.loads(members[entry["config"]])
        states[model] = _state_from_h5(members[entry["weights"]], entry["weights"])
    return Bundle(manifest=manifest, configs=configs, states=states)


def model_config(config: dict, version: int) -> ModelConfig:
    """A bundle config's ``model`` as a :class:`ModelConfig` (format 1's BP-UNet translated)."""
    model = dict(config["model"])
    if version == 1:
        settings = {k: model.pop(k) for k in ("width", "depth", "stride", "skips") if k in model}
        model.update(network="bp_unet", settings={"stride": 1, "skips": "concat", **settings})
    return ModelConfig(**model)


def load_inference_model(path: str | Path, expected_sha256: str | None = None) -> torch.nn.Module:
    """The verified ``diffraction_to_obj`` network of a bundle, ready for inference (eval mode, CPU)."""
    bundle = read_bundle(path, expected_sha256)
    if "diffraction_to_obj" not in bundle.configs:
        raise BundleError(f"{path}: holds no diffraction_to_obj model")
    config, state = bundle.configs["diffraction_to_obj"], bundle.states["diffraction_to_obj"]
    try:
        net = build_network(model_config(config, bundle.manifest["format_version"]), state["probe"])
        net.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise BundleError(f"{path}: its diffraction_to_obj config and weights do not make a network ({err})") from None
    return net.eval()
