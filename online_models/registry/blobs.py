"""Safetensors encoding of snapshots and deltas (pure: bytes in, bytes out).

Item ids travel as two tensors (UTF-8 bytes and their lengths) rather than in the
header, so a million-item catalog neither bloats the JSON header nor needs a separator
that an id could contain. Never pickle: only arrays and a string-to-string header. The
header also carries the version's metadata (``info``), so the store alone can rebuild
the registry after Redis lost it.

**Nothing is allocated for a blob that does not fit.** Decoding first reads the header
and checks it against the blob's own length (every tensor's bytes inside the blob and
matching its declared shape), then against the model (``WeightSpec``: a snapshot's own
declared model shape, a delta's the weights it applies to): every tensor's name, dtype and
shape, the item-row tensors' width and row count (the co-visitation rows: int32 item rows
and float32 counts, ``K`` wide; a version written before them loads with an empty
table). Only then are the tensors read, so a header declaring a 10^9 x 64 table, a table
of the wrong width or a delta without ``start_row`` is a ``BlobFormatError``, never a huge
allocation or a crash later in the model.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from online_models.model.weights import (
    COVIS_ITEMS,
    ROW_TENSORS,
    ModelShape,
    ModelWeights,
    WeightDelta,
)
from online_models.registry.weight_spec import OPTIONAL_ROWS, ShapeError, WeightSpec

_IDS_BYTES = "__item_ids.bytes"
_IDS_LENGTHS = "__item_ids.lengths"
_ROWS = "__rows"
_ROW_PREFIX = "row."
_DENSE_PREFIX = "dense."
_METADATA = "__metadata__"
INFO = "info"  # header key of the version's metadata (JSON), see ``version_info``
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
MAX_HEADER_BYTES = 100 * 2**20


class BlobFormatError(ValueError):
    """The bytes are not a blob this module wrote for this model (or not the expected kind)."""


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor as the header declares it (checked against the blob's length)."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BlobHeader:
    """A blob's header metadata and tensor index, checked for consistency with its length."""

    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]

    @property
    def kind(self) -> str:
        return self.metadata.get("kind", "")

    def int_field(self, name: str) -> int:
        try:
            return int(self.metadata[name])
        except (KeyError, ValueError) as exc:
            raise BlobFormatError(f"header field {name!r} missing or not a number") from exc

    @property
    def n_ids(self) -> int:
        """How many item ids the blob holds (from its ids-lengths tensor)."""
        entry = self.tensors.get(_IDS_LENGTHS)
        if entry is None or entry.dtype != "I64" or len(entry.shape) != 1:
            raise BlobFormatError("no item ids")
        return entry.shape[0]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def header_length(prefix: bytes) -> int:
    """The header's size in bytes, from a blob's first 8 bytes."""
    if len(prefix) < 8:
        raise BlobFormatError("too short for a safetensors header")
    (size,) = struct.unpack("<Q", prefix[:8])
    return size


def read_header(head: bytes, blob_size: int) -> BlobHeader:
    """The header of a ``blob_size``-byte blob, from at least its first 8 + header bytes.

    Every tensor must lie inside the blob and be exactly as long as its dtype and shape
    say; nothing else is read (the store reads headers without reading whole blobs).
    """
    size = header_length(head)
    if size > min(MAX_HEADER_BYTES, blob_size - 8) or len(head) < 8 + size:
        raise BlobFormatError(f"header of {size} bytes does not fit a {blob_size}-byte blob")
    try:
        raw = json.loads(head[8 : 8 + size])
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        metadata = raw.pop(_METADATA, None) or {}
        if not isinstance(metadata, dict):
            raise TypeError("metadata is not a JSON object")
        tensors = {name: _entry(entry, blob_size - 8 - size) for name, entry in raw.items()}
        return BlobHeader({str(k): str(v) for k, v in metadata.items()}, tensors)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
        raise BlobFormatError(f"bad header: {exc}") from exc


def _entry(entry: dict[str, object], data_bytes: int) -> TensorEntry:
    dtype = str(entry["dtype"])
    shape = entry["shape"]
    begin, end = entry["data_offsets"]  # type: ignore[misc]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"bad shape {shape!r}")
    if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_bytes):
        raise ValueError(f"data {begin}..{end} outside the blob's {data_bytes} data bytes")
    if end - begin != math.prod(shape) * _ITEMSIZE[dtype]:
        raise ValueError(f"{dtype}{shape} does not fill {end - begin} bytes")
    return TensorEntry(dtype, tuple(shape))


def _encode_ids(ids: list[str]) -> dict[str, np.ndarray]:
    encoded = [item.encode("utf-8", "surrogatepass") for item in ids]
    return {
        _IDS_BYTES: np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(),
        _IDS_LENGTHS: np.array([len(e) for e in encoded], dtype=np.int64),
    }


def _decode_ids(tensors: dict[str, np.ndarray]) -> list[str]:
    data = tensors.pop(_IDS_BYTES).tobytes()
    lengths = tensors.pop(_IDS_LENGTHS)
    if (lengths < 0).any() or int(lengths.sum()) != len(data):
        raise BlobFormatError("item id lengths do not match their bytes")
    ends = np.cumsum(lengths)
    starts = ends - lengths
    # Byte offsets are character offsets in ASCII: one decode, then slices of the text
    # (a 16.5k-item catalog in 1.5 ms instead of 7 on every hot swap).
    text = data.decode("ascii") if data.isascii() else None
    if text is not None:
        return [text[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    return [
        data[s:e].decode("utf-8", "surrogatepass")
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    ]


def encode_snapshot(weights: ModelWeights, info: str = "") -> bytes:
    """A complete model version as one safetensors blob (``info``: the version's metadata)."""
    tensors = {name: np.ascontiguousarray(v) for name, v in weights.tensors.items()}
    tensors.update(_encode_ids(weights.item_ids))
    meta = {
        "kind": "snapshot",
        "version": str(weights.version),
        "parent": "" if weights.parent is None else str(weights.parent),
        "shape": json.dumps(weights.shape.as_dict()),
        INFO: info,
    }
    return save_tensors(tensors, metadata=meta)


def _read_tensors(blob: bytes, header: BlobHeader) -> tuple[dict[str, np.ndarray], list[str]]:
    """The tensors and item ids of a blob whose header was checked."""
    try:
        tensors = dict(load_tensors(blob))
    except Exception as exc:  # safetensors raises its own error types
        raise BlobFormatError(f"unreadable {header.kind}: {exc}") from exc
    return tensors, _decode_ids(tensors)


def check_snapshot(header: BlobHeader) -> WeightSpec:
    """The spec of the model the snapshot declares; ``BlobFormatError`` unless it fits it."""
    if header.kind != "snapshot":
        raise BlobFormatError(f"expected a snapshot, got {header.kind!r}")
    header.int_field("version")
    try:
        shape = ModelShape(**json.loads(header.metadata["shape"]))
        if not isinstance(shape.num_layers, int) or shape.num_layers > len(header.tensors):
            raise ShapeError(f"{shape.num_layers} layers cannot fit {len(header.tensors)} tensors")
        spec = WeightSpec.for_shape(shape)  # its cost is bounded by the header's size
    except (KeyError, TypeError, ValueError, ShapeError) as exc:
        raise BlobFormatError(f"unreadable snapshot shape: {exc}") from exc
    n = _check_ids(header)
    expected = {**spec.rows(n), **{name: ("F32", shape) for name, shape in spec.dense.items()}}
    optional = spec.optional | OPTIONAL_ROWS
    _check_tensors(header, expected, optional, ignore=(_IDS_BYTES, _IDS_LENGTHS))
    return spec


def decode_snapshot(blob: bytes) -> ModelWeights:
    header = read_header(blob, len(blob))
    spec = check_snapshot(header)
    tensors, ids = _read_tensors(blob, header)
    tensors = _with_empty_rows(tensors, spec, len(ids))
    parent = int(header.metadata["parent"]) if header.metadata.get("parent") else None
    return ModelWeights(header.int_field("version"), spec.shape, ids, tensors, parent=parent)


def _with_empty_rows(
    tensors: dict[str, np.ndarray], spec: WeightSpec, n: int
) -> dict[str, np.ndarray]:
    """``tensors`` with the optional row tensors a version before them lacks, empty."""
    for name, (dtype, shape) in spec.rows(n).items():
        if name in OPTIONAL_ROWS and name not in tensors:
            empty = -1 if name == COVIS_ITEMS else 0
            tensors[name] = np.full(shape, empty, np.int32 if dtype == "I32" else np.float32)
    return tensors


def encode_delta(delta: WeightDelta, info: str = "") -> bytes:
    """The touched rows, new item ids and changed dense tensors as one blob."""
    tensors: dict[str, np.ndarray] = {_ROWS: np.ascontiguousarray(delta.rows, dtype=np.int64)}
    for name in ROW_TENSORS:
        if name in delta.row_values:  # a delta without the optional rows leaves them as they are
            tensors[_ROW_PREFIX + name] = np.ascontiguousarray(delta.row_values[name])
    for name, value in delta.dense.items():
        tensors[_DENSE_PREFIX + name] = np.ascontiguousarray(value)
    tensors.update(_encode_ids(delta.new_item_ids))
    meta = {
        "kind": "delta",
        "version": str(delta.version),
        "parent": str(delta.parent),
        "start_row": str(delta.start_row),
        INFO: info,
    }
    return save_tensors(tensors, metadata=meta)


def check_delta(header: BlobHeader, spec: WeightSpec) -> None:
    """``BlobFormatError`` unless the header is a delta for the model ``spec`` describes
    (that of the weights it applies to: a delta does not declare a model shape)."""
    if header.kind != "delta":
        raise BlobFormatError(f"expected a delta, got {header.kind!r}")
    for name in ("version", "parent", "start_row"):
        if header.int_field(name) < 0:
            raise BlobFormatError(f"negative {name}")
    _check_ids(header)
    rows = header.tensors.get(_ROWS)
    if rows is None or rows.dtype != "I64" or len(rows.shape) != 1:
        raise BlobFormatError("a delta needs its row numbers")
    k = rows.shape[0]
    expected = {
        **{_ROW_PREFIX + name: entry for name, entry in spec.rows(k).items()},
        **{_DENSE_PREFIX + name: ("F32", shape) for name, shape in spec.dense.items()},
    }
    changed_only = {_DENSE_PREFIX + name for name in spec.dense}  # a delta carries what changed
    changed_only |= {_ROW_PREFIX + name for name in OPTIONAL_ROWS}  # older learners
    _check_tensors(header, expected, changed_only, ignore=(_IDS_BYTES, _IDS_LENGTHS, _ROWS))


def decode_delta(blob: bytes, spec: WeightSpec) -> WeightDelta:
    header = read_header(blob, len(blob))
    check_delta(header, spec)
    tensors, ids = _read_tensors(blob, header)
    try:
        rows = tensors.pop(_ROWS)
        row_values = {
            name: tensors.pop(_ROW_PREFIX + name)
            for name in ROW_TENSORS
            if name not in OPTIONAL_ROWS or _ROW_PREFIX + name in tensors
        }
    except KeyError as exc:
        raise BlobFormatError(f"unreadable delta: missing {exc}") from exc
    start_row = header.int_field("start_row")
    end_row = start_row + len(ids)
    if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= end_row):
        raise BlobFormatError(f"delta rows outside 0..{end_row - 1}")
    if not np.isin(np.arange(start_row, end_row), rows).all():
        raise BlobFormatError("a new item's row is missing from the delta")
    dense = {
        name[len(_DENSE_PREFIX) :]: value
        for name, value in tensors.items()
        if name.startswith(_DENSE_PREFIX)
    }
    return WeightDelta(
        version=header.int_field("version"),
        parent=header.int_field("parent"),
        start_row=start_row,
        new_item_ids=ids,
        rows=rows,
        row_values=row_values,
        dense=dense,
    )


def _check_ids(header: BlobHeader) -> int:
    """How many item ids the blob holds; ``BlobFormatError`` when its id tensors are wrong."""
    ids = header.tensors.get(_IDS_BYTES)
    if ids is None or ids.dtype != "U8" or len(ids.shape) != 1:
        raise BlobFormatError("no item ids")
    return header.n_ids


def _check_tensors(
    header: BlobHeader,
    expected: Mapping[str, tuple[str, tuple[int, ...]]],
    optional: set[str] | frozenset[str],
    ignore: tuple[str, ...],
) -> None:
    """Every declared tensor is expected, of the expected dtype and shape; none missing."""
    for name, entry in header.tensors.items():
        if name in ignore:
            continue
        if name not in expected:
            raise BlobFormatError(f"unexpected tensor {name!r}")
        dtype, shape = expected[name]
        if entry.dtype != dtype or entry.shape != tuple(shape):
            raise BlobFormatError(
                f"{name} is {entry.dtype}{list(entry.shape)}, expected {dtype}{list(shape)}"
            )
    missing = set(expected) - set(header.tensors) - set(optional)
    if missing:
        raise BlobFormatError(f"missing tensors {sorted(missing)}")
