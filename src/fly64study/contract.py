"""Phase B: the study's NPZ data contract, one validator used by every phase that reads data.

Axis order is (n, H, W). Keys:

============== ========== ========== =====================================================
key            dtype      shape      meaning
============== ========== ========== =====================================================
diffraction    float32    (n, N, N)  measured amplitude sqrt(counts) / s, fftshifted
probeGuess     complex64  (N, N)     probe
objectGuess    complex64  (H, W)     ground-truth object, H, W >= N
xcoords        float64    (n,)       scan positions (patch centres), object pixels
ycoords        float64    (n,)
Y              complex64  (n, N, N)  optional ground-truth object patches
_metadata      unicode    ()         JSON object: provenance and transformation records
============== ========== ========== =====================================================

Nothing is ever unpickled (``allow_pickle=False`` on every load). Files are written as a zip
of ``.npy`` members with a fixed date and sorted names, so equal arrays give equal bytes, and
atomically, so a killed writer leaves no partial file.

The legacy (N, N, n) diffraction layout is refused on load; :func:`from_legacy_layout`
converts it explicitly and records the transformation in ``_metadata``.
"""
from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fly64study.files import ZIP_EPOCH, atomic_path

REQUIRED = ("diffraction", "probeGuess", "objectGuess", "xcoords", "ycoords", "_metadata")
OPTIONAL = ("Y",)
METADATA_REQUIRED = ("nphotons", "N", "intensity_scale", "seeds", "source", "transformations")


class ContractError(ValueError):
    """A file or array set breaks the data contract; the message names the key and the expectation."""


@dataclass(frozen=True)
class Dataset:
    """One validated study dataset (a split or an overlap view)."""

    diffraction: np.ndarray  # (n, N, N) float32, sqrt(counts) / s, fftshifted
    probeGuess: np.ndarray  # (N, N) complex64
    objectGuess: np.ndarray  # (H, W) complex64
    xcoords: np.ndarray  # (n,) float64, object pixels
    ycoords: np.ndarray  # (n,) float64, object pixels
    metadata: dict = field(default_factory=dict)
    Y: np.ndarray | None = None  # (n, N, N) complex64 ground-truth patches

    @property
    def n(self) -> int:
        return self.diffraction.shape[0]

    @property
    def N(self) -> int:
        return self.diffraction.shape[1]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {k: getattr(self, k) for k in REQUIRED if k != "_metadata"}
        if self.Y is not None:
            out["Y"] = self.Y
        return out

    def subset(self, index: np.ndarray, record: dict, **fields: Any) -> "Dataset":
        """The positions ``index`` (in this order), with ``record`` appended to the transformations
        and top-level metadata ``fields`` set."""
        meta = json.loads(json.dumps(self.metadata))
        meta["transformations"].append(record)
        meta.update(fields)
        return Dataset(
            diffraction=self.diffraction[index],
            probeGuess=self.probeGuess,
            objectGuess=self.objectGuess,
            xcoords=self.xcoords[index],
            ycoords=self.ycoords[index],
            metadata=meta,
            Y=None if self.Y is None else self.Y[index],
        )


# ----------------------------------------------------------------------------- validation
def _require_dtype(key: str, arr: np.ndarray, dtype: np.dtype, hint: str) -> None:
    if arr.dtype != dtype:
        raise ContractError(f"{key}: expected dtype {np.dtype(dtype).name}, got {arr.dtype.name}; {hint}")


def _require_finite(key: str, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ContractError(f"{key}: holds {bad} NaN or infinite value(s); every value must be finite")


def validate_probe_object(probe: np.ndarray, obj: np.ndarray) -> None:
    """Check a probe and an object alone (what a base NPZ must supply)."""
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1]:
        raise ContractError(f"probeGuess: expected a square (N, N) array, got shape {probe.shape}")
    _require_dtype("probeGuess", probe, np.complex64, "the probe is complex; cast with .astype(np.complex64)")
    _require_finite("probeGuess", probe)
    if obj.ndim != 2:
        raise ContractError(f"objectGuess: expected a 2-D (H, W) array, got shape {obj.shape}")
    if min(obj.shape) < probe.shape[0]:
        raise ContractError(f"objectGuess: shape {obj.shape} is smaller than the probe's N = {probe.shape[0]}")
    _require_dtype("objectGuess", obj, np.complex64, "the object is complex; cast with .astype(np.complex64)")
    _require_finite("objectGuess", obj)


def validate_metadata(meta: Any) -> dict:
    if not isinstance(meta, dict):
        raise ContractError(f"_metadata: expected a JSON object, got {type(meta).__name__}")
    for key in METADATA_REQUIRED:
        if key not in meta:
            raise ContractError(f"_metadata: missing field {key!r}; required: {list(METADATA_REQUIRED)}")
    if not isinstance(meta["transformations"], list):
        raise ContractError("_metadata: field 'transformations' must be a list of records")
    return meta


def validate(arrays: Mapping[str, np.ndarray], metadata: Any) -> None:
    """Raise :class:`ContractError` unless ``arrays`` + ``metadata`` satisfy the contract."""
    for key in REQUIRED:
        if key != "_metadata" and key not in arrays:
            raise ContractError(f"{key}: missing; a study dataset needs {list(REQUIRED)}")
    unknown = sorted(set(arrays) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ContractError(f"{unknown[0]}: unknown key; allowed: {list(REQUIRED + OPTIONAL)}")
    diff = arrays["diffraction"]
    probe, obj = arrays["probeGuess"], arrays["objectGuess"]
    x, y = arrays["xcoords"], arrays["ycoords"]
    if not np.issubdtype(diff.dtype, np.floating):
        raise ContractError(
            f"diffraction: expected float32 amplitudes (sqrt(counts) / s), got dtype {diff.dtype.name}; "
            "raw counts must be converted to amplitudes first"
        )
    _require_dtype("diffraction", diff, np.float32, "cast with .astype(np.float32)")
    if diff.ndim != 3:
        raise ContractError(f"diffraction: expected a 3-D (n, N, N) array, got shape {diff.shape}")
    validate_probe_object(probe, obj)
    N = probe.shape[0]
    for key, c in (("xcoords", x), ("ycoords", y)):
        if c.ndim != 1:
            raise ContractError(f"{key}: expected a 1-D (n,) array, got shape {c.shape}")
        _require_dtype(key, c, np.float64, "cast with .astype(np.float64)")
    if x.shape != y.shape:
        raise ContractError(f"ycoords: length {y.shape[0]} differs from xcoords' {x.shape[0]}")
    n = x.shape[0]
    if diff.shape[1:] == (N, n) and diff.shape[0] == N and diff.shape[0] != n:
        raise ContractError(
            f"diffraction: shape {diff.shape} looks like the legacy (N, N, n) layout; the contract is (n, N, N). "
            "Convert explicitly with fly64study.contract.from_legacy_layout, which records the transformation"
        )
    if diff.shape != (n, N, N):
        raise ContractError(
            f"diffraction: expected shape (n, N, N) = ({n}, {N}, {N}) from xcoords and probeGuess, got {diff.shape}"
        )
    _require_finite("diffraction", diff)
    if diff.size and float(diff.min()) < 0:
        raise ContractError("diffraction: holds negative values; amplitudes are sqrt(counts) / s >= 0")
    _require_finite("xcoords", x)
    _require_finite("ycoords", y)
    if "Y" in arrays:
        Y = arrays["Y"]
        if Y.shape != (n, N, N):
            raise ContractError(f"Y: expected shape ({n}, {N}, {N}), got {Y.shape}")
        _require_dtype("Y", Y, np.complex64, "cast with .astype(np.complex64)")
        _require_finite("Y", Y)
    meta = validate_metadata(metadata)
    if meta["N"] != N:
        raise ContractError(f"_metadata: field 'N' = {meta['N']} differs from the probe's N = {N}")


# ----------------------------------------------------------------------------- reading
MAX_MEMBER_BYTES = 1 << 34  # 16 GiB: far above a full-profile split (~2 GB), far below a zip bomb's claims
NUMERIC_KINDS = "biufcU"  # bool, integers, floats, complex; unicode only for _metadata


def _inspect_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> None:
    """Refuse a member before reading its data: a bad name, a size above ``limit``, an object dtype,
    or a header whose shape and dtype do not account for exactly the member's declared size."""
    name = info.filename
    if "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".npy"):
        raise ContractError(f"member {name!r}: an NPZ holds flat '<key>.npy' members only (no paths, no '..')")
    if info.file_size > limit:
        raise ContractError(f"member {name!r}: {info.file_size} bytes uncompressed exceeds the limit of {limit}")
    with zf.open(info) as fh:
        try:
            version = np.lib.format.read_magic(fh)
            shape, fortran, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                                     else np.lib.format.read_array_header_2_0(fh))
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            raise ContractError(f"member {name!r}: unreadable ({type(err).__name__}: {err})") from None
        except Exception as err:  # noqa: BLE001 - numpy parses the header text: any failure is a refusal
            raise ContractError(f"member {name!r}: not a valid .npy header ({type(err).__name__}: {err})") from None
        header = fh.tell()
    if dtype.hasobject or dtype.kind not in NUMERIC_KINDS:
        raise ContractError(f"member {name!r}: dtype {dtype} is an object (pickled) array or not numeric; the "
                            "contract stores only numeric arrays and _metadata as a JSON string")
    if any(d < 0 for d in shape) or header + math.prod(shape) * dtype.itemsize != info.file_size:
        raise ContractError(f"member {name!r}: its header declares shape {shape} of {dtype}, which does not match "
                            f"the {info.file_size - header} data bytes it holds (truncated or forged)")


def _crc_mismatch(path: Path, name: str) -> str:
    """'member <name>: CRC-32 <actual> differs from the recorded <expected>' for a stored member
    (the study writes its NPZ files uncompressed): its data bytes, read where the zip puts them."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return f"member {name!r}: its CRC-32 differs from the recorded {info.CRC:08x}"
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)  # the local file header; its name and extra field come before the data
        fh.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little"))
        actual, left = 0, info.file_size
        while left:
            block = fh.read(min(left, 1 << 20))
            if not block:
                break
            actual, left = zlib.crc32(block, actual), left - len(block)
    return f"member {name!r}: CRC-32 {actual:08x} differs from the recorded {info.CRC:08x}"


def read_npz(path: str | Path, max_member_bytes: int = MAX_MEMBER_BYTES) -> tuple[dict[str, np.ndarray], Any]:
    """Read every member of an NPZ without pickle; return (arrays, metadata parsed from JSON or None).

    Each member is checked before its data is read (:func:`_inspect_member`), so a forged header,
    a zip bomb or an object array is refused without allocating what it claims.
    """
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: no such file")
    arrays = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                _inspect_member(zf, info, max_member_bytes)
                with zf.open(info) as fh:
                    arrays[info.filename[:-4]] = np.lib.format.read_array(fh, allow_pickle=False)
    except ContractError as err:
        raise ContractError(f"{path}: {err}") from None
    except zipfile.BadZipFile as err:
        if str(err).startswith("Bad CRC-32"):  # the member's bytes are not those it was written with
            raise ContractError(f"{path}: corrupted: {_crc_mismatch(path, str(err).split(chr(39))[1])}; restore it "
                                "(`dvc checkout`, `dvc pull`) or remake it (`dvc repro`)") from None
        raise ContractError(f"{path}: not a readable NPZ file (BadZipFile: {err})") from None
    except (zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as err:
        raise ContractError(f"{path}: not a readable NPZ file ({type(err).__name__}: {err})") from None
    meta = None
    if "_metadata" in arrays:
        raw = arrays.pop("_metadata")
        if raw.shape != () or raw.dtype.kind != "U":
            raise ContractError(
                f"_metadata: expected a 0-d unicode array holding JSON, got dtype {raw.dtype} shape {raw.shape}"
            )
        try:
            meta = json.loads(str(raw))
        except json.JSONDecodeError as err:
            raise ContractError(f"_metadata: not valid JSON ({err})") from None
    return arrays, meta


def read_json(path: str | Path) -> dict:
    """A JSON record another stage wrote (a manifest, metrics, a summary), or a clear error."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ContractError(f"{path}: cannot read ({err}); run `dvc repro` to produce it") from None


def load_dataset(path: str | Path) -> Dataset:
    """Load and validate a study NPZ; refuse anything that breaks the contract."""
    arrays, meta = read_npz(path)
    if meta is None:
        raise ContractError(f"_metadata: missing in {path}; a study dataset records its provenance")
    try:
        validate(arrays, meta)
    except ContractError as err:
        raise ContractError(f"{path}: {err}") from None
    return Dataset(metadata=meta, **arrays)


# ----------------------------------------------------------------------------- writing
def save_dataset(path: str | Path, ds: Dataset) -> None:
    """Validate ``ds`` and write it as a deterministic NPZ, atomically."""
    arrays = ds.arrays()
    validate(arrays, ds.metadata)
    arrays["_metadata"] = np.array(json.dumps(ds.metadata, sort_keys=True, allow_nan=False))
    write_npz(path, arrays)


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays as an uncompressed NPZ with sorted members and a fixed date (byte-reproducible)."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key in sorted(arrays):
                info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_EPOCH)
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asarray(arrays[key]), allow_pickle=False)


def from_legacy_layout(arrays: Mapping[str, np.ndarray], metadata: dict) -> tuple[dict, dict]:
    """Convert legacy (N, N, n) ``diffraction`` (and ``Y``) to (n, N, N), recording the step."""
    out = dict(arrays)
    for key in ("diffraction", "Y"):
        if key in out:
            out[key] = np.ascontiguousarray(np.moveaxis(out[key], -1, 0))
    meta = json.loads(json.dumps(metadata))
    meta.setdefault("transformations", []).append(
        {"op": "from_legacy_layout", "from": "(N, N, n)", "to": "(n, N, N)", "keys": [k for k in ("diffraction", "Y") if k in out]}
    )
    return out, meta
