"""Safetensors encoding of snapshots and deltas (pure: bytes in, bytes out).

Item ids travel as two tensors (UTF-8 bytes and their lengths) rather than in the
header, so a million-item catalog neither bloats the JSON header nor needs a separator
that an id could contain. Never pickle: only arrays and a string-to-string header.
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from online_models.model.weights import ROW_TENSORS, ModelShape, ModelWeights, WeightDelta

_IDS_BYTES = "__item_ids.bytes"
_IDS_LENGTHS = "__item_ids.lengths"
_ROWS = "__rows"
_ROW_PREFIX = "row."
_DENSE_PREFIX = "dense."


class BlobFormatError(ValueError):
    """The bytes are not a blob this module wrote (or not the expected kind)."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _encode_ids(ids: list[str]) -> dict[str, np.ndarray]:
    encoded = [item.encode("utf-8", "surrogatepass") for item in ids]
    return {
        _IDS_BYTES: np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(),
        _IDS_LENGTHS: np.array([len(e) for e in encoded], dtype=np.int64),
    }


def _decode_ids(tensors: dict[str, np.ndarray]) -> list[str]:
    data = tensors.pop(_IDS_BYTES).tobytes()
    lengths = tensors.pop(_IDS_LENGTHS)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    return [
        data[s:e].decode("utf-8", "surrogatepass")
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    ]


def read_header_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob."""
    if len(blob) < 8:
        raise BlobFormatError("too short for a safetensors header")
    (size,) = struct.unpack("<Q", blob[:8])
    try:
        header = json.loads(blob[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BlobFormatError(f"bad header: {exc}") from exc
    return dict(header.get("__metadata__") or {})


def encode_snapshot(weights: ModelWeights) -> bytes:
    """A complete model version as one safetensors blob."""
    tensors = {name: np.ascontiguousarray(v) for name, v in weights.tensors.items()}
    tensors.update(_encode_ids(weights.item_ids))
    meta = {
        "kind": "snapshot",
        "version": str(weights.version),
        "parent": "" if weights.parent is None else str(weights.parent),
        "shape": json.dumps(weights.shape.as_dict()),
    }
    return save_tensors(tensors, metadata=meta)


def _read_blob(blob: bytes, kind: str) -> tuple[dict[str, str], dict[str, np.ndarray], list[str]]:
    """Metadata, tensors and item ids of a blob of ``kind``; ``BlobFormatError`` otherwise."""
    meta = read_header_metadata(blob)
    if meta.get("kind") != kind:
        raise BlobFormatError(f"expected a {kind}, got {meta.get('kind')!r}")
    try:
        tensors = dict(load_tensors(blob))
        return meta, tensors, _decode_ids(tensors)
    except Exception as exc:  # safetensors raises its own error types
        raise BlobFormatError(f"unreadable {kind}: {exc}") from exc


def decode_snapshot(blob: bytes) -> ModelWeights:
    meta, tensors, ids = _read_blob(blob, "snapshot")
    try:
        shape = ModelShape(**json.loads(meta["shape"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise BlobFormatError(f"unreadable snapshot shape: {exc}") from exc
    parent = int(meta["parent"]) if meta.get("parent") else None
    return ModelWeights(int(meta["version"]), shape, ids, tensors, parent=parent)


def encode_delta(delta: WeightDelta) -> bytes:
    """The touched rows, new item ids and changed dense tensors as one blob."""
    tensors: dict[str, np.ndarray] = {_ROWS: np.ascontiguousarray(delta.rows, dtype=np.int64)}
    for name in ROW_TENSORS:
        tensors[_ROW_PREFIX + name] = np.ascontiguousarray(delta.row_values[name])
    for name, value in delta.dense.items():
        tensors[_DENSE_PREFIX + name] = np.ascontiguousarray(value)
    tensors.update(_encode_ids(delta.new_item_ids))
    meta = {
        "kind": "delta",
        "version": str(delta.version),
        "parent": str(delta.parent),
        "start_row": str(delta.start_row),
    }
    return save_tensors(tensors, metadata=meta)


def decode_delta(blob: bytes) -> WeightDelta:
    meta, tensors, ids = _read_blob(blob, "delta")
    try:
        rows = tensors.pop(_ROWS)
        row_values = {name: tensors.pop(_ROW_PREFIX + name) for name in ROW_TENSORS}
    except KeyError as exc:
        raise BlobFormatError(f"unreadable delta: missing {exc}") from exc
    dense = {
        name[len(_DENSE_PREFIX) :]: value
        for name, value in tensors.items()
        if name.startswith(_DENSE_PREFIX)
    }
    return WeightDelta(
        version=int(meta["version"]),
        parent=int(meta["parent"]),
        start_row=int(meta["start_row"]),
        new_item_ids=ids,
        rows=rows,
        row_values=row_values,
        dense=dense,
    )
