"""Snapshot/delta encoding, header checks and delta application (pure, no Redis)."""

from __future__ import annotations

import json
import struct
import tracemalloc
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from online_models.model.recommender import SessionRecommender, random_weights
from online_models.model.weights import (
    ITEM_BIAS,
    ITEM_TABLE,
    DeltaMismatchError,
    ModelShape,
    WeightDelta,
    apply_deltas,
)
from online_models.registry.blobs import (
    BlobFormatError,
    decode_delta,
    decode_snapshot,
    encode_delta,
    encode_snapshot,
    read_header,
)
from online_models.registry.weight_spec import WeightSpec
from streamrec.settings import ModelSettings

SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=5)
SPEC = WeightSpec.for_shape(ModelShape.from_settings(SMALL))


def edit_header(blob: bytes, edit: Callable[[dict], None]) -> bytes:
    """``blob`` with its JSON header changed by ``edit`` (the data bytes unchanged)."""
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    edit(header)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + blob[8 + size :]


@pytest.mark.parametrize("odd", ["id,with\nnewline\x00and-é", "ascii,with\nnewline\x00"])
def test_snapshot_round_trip_keeps_every_tensor_and_odd_item_ids(odd: str) -> None:
    weights = random_weights(6, SMALL)
    weights.item_ids[2] = odd
    weights.item_ids[4] = ""
    decoded = decode_snapshot(encode_snapshot(weights))
    assert decoded.item_ids == weights.item_ids
    assert decoded.shape == weights.shape
    assert set(decoded.tensors) == set(weights.tensors)
    for name, value in weights.tensors.items():
        np.testing.assert_array_equal(decoded.tensors[name], value)


def _delta(weights, new_ids: list[str]) -> WeightDelta:
    n = weights.n_items
    rows = np.array([1, *range(n, n + len(new_ids))], dtype=np.int64)
    hidden = weights.shape.hidden_size
    return WeightDelta(
        version=weights.version + 1,
        parent=weights.version,
        start_row=n,
        new_item_ids=new_ids,
        rows=rows,
        row_values={
            ITEM_TABLE: np.full((len(rows), hidden), 0.5, dtype=np.float32),
            ITEM_BIAS: np.full(len(rows), 2.0, dtype=np.float32),
        },
        dense={"head.projection.bias": np.ones(hidden, dtype=np.float32)},
    )


def test_applied_delta_changes_only_its_rows_and_appends_new_items() -> None:
    weights = random_weights(4, SMALL)
    delta = decode_delta(encode_delta(_delta(weights, ["new-a", "new-b"])), SPEC)
    updated = apply_deltas(weights, [delta])
    assert updated.item_ids == [*weights.item_ids, "new-a", "new-b"]
    table = updated.tensors[ITEM_TABLE]
    np.testing.assert_array_equal(table[[0, 2, 3]], weights.tensors[ITEM_TABLE][[0, 2, 3]])
    assert (table[[1, 4, 5]] == 0.5).all()
    assert (updated.tensors[ITEM_BIAS][[1, 4, 5]] == 2.0).all()
    assert (updated.tensors["head.projection.bias"] == 1).all()
    assert not (weights.tensors["head.projection.bias"] == 1).all()  # input untouched


def test_delta_on_the_wrong_parent_is_refused() -> None:
    weights = random_weights(4, SMALL)
    delta = _delta(weights, [])
    delta.parent = 99
    with pytest.raises(DeltaMismatchError):
        apply_deltas(weights, [delta])


def test_garbage_is_not_a_blob() -> None:
    with pytest.raises(BlobFormatError):
        decode_delta(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!", SPEC)
    with pytest.raises(BlobFormatError):
        decode_delta(encode_snapshot(random_weights(2, SMALL)), SPEC)
    with pytest.raises(BlobFormatError):
        decode_snapshot(b"\x05\x00")


def test_the_version_metadata_travels_in_the_header() -> None:
    blob = encode_snapshot(random_weights(3, SMALL), info='{"source": "learner"}')
    assert read_header(blob, len(blob)).metadata["info"] == '{"source": "learner"}'


def test_a_header_declaring_a_huge_table_is_refused_without_allocating() -> None:
    def huge(header: dict) -> None:
        begin = header[ITEM_TABLE]["data_offsets"][0]
        header[ITEM_TABLE] = {
            "dtype": "F32", "shape": [10**9, 64], "data_offsets": [begin, begin + 4 * 64 * 10**9]
        }  # fmt: skip

    blob = edit_header(encode_snapshot(random_weights(3, SMALL)), huge)
    tracemalloc.start()
    try:
        with pytest.raises(BlobFormatError, match="outside the blob"):
            decode_snapshot(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20


def test_a_header_whose_shape_does_not_fill_its_bytes_is_refused() -> None:
    def lie(header: dict) -> None:
        header[ITEM_BIAS]["shape"] = [2]  # the bytes hold 3 floats

    with pytest.raises(BlobFormatError, match="does not fill"):
        decode_snapshot(edit_header(encode_snapshot(random_weights(3, SMALL)), lie))


def test_an_item_table_of_the_wrong_width_is_refused() -> None:
    weights = random_weights(4, SMALL)
    weights.tensors[ITEM_TABLE] = np.zeros((4, 8), dtype=np.float32)
    with pytest.raises(BlobFormatError, match="head.item_table"):
        decode_snapshot(encode_snapshot(weights))


def test_a_snapshot_whose_tensors_do_not_fit_its_declared_model_is_refused() -> None:
    def wider(header: dict) -> None:
        header["__metadata__"]["shape"] = json.dumps(ModelShape(32, 1, 2, 5).as_dict())

    with pytest.raises(BlobFormatError, match="expected F32"):
        decode_snapshot(edit_header(encode_snapshot(random_weights(4, SMALL)), wider))
    other = SMALL.model_copy(update={"hidden_size": 32})  # another size, self-consistent: fine
    assert decode_snapshot(encode_snapshot(random_weights(4, other))).shape.hidden_size == 32


@pytest.mark.parametrize(
    "shape",
    [
        {"hidden_size": 60000, "num_layers": 10**6, "num_heads": 8, "max_seq_len": 5},
        {"hidden_size": 10**9, "num_layers": 1, "num_heads": 2, "max_seq_len": 5},
        {"hidden_size": 16, "num_layers": 1, "num_heads": 3, "max_seq_len": 5},
        {"hidden_size": -16, "num_layers": 1, "num_heads": 2, "max_seq_len": 5},
        {"hidden_size": "16", "num_layers": 1, "num_heads": 2, "max_seq_len": 5},
    ],
)
def test_an_impossible_declared_model_shape_is_refused_without_building_it(shape: dict) -> None:
    def declare(header: dict) -> None:
        header["__metadata__"]["shape"] = json.dumps(shape)

    blob = edit_header(encode_snapshot(random_weights(3, SMALL)), declare)
    tracemalloc.start()
    try:
        with pytest.raises(BlobFormatError, match="shape"):
            decode_snapshot(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20


def test_the_spec_names_and_shapes_are_the_models_own() -> None:
    model = SessionRecommender(ModelShape.from_settings(SMALL), capacity=1)
    assert SPEC.dense == {name: value.shape for name, value in model.dense_tensors().items()}


def test_a_snapshot_with_a_dense_tensor_missing_or_extra_is_refused() -> None:
    weights = random_weights(4, SMALL)
    name = next(n for n in weights.tensors if n.startswith("backbone."))
    missing = replace(weights, tensors={k: v for k, v in weights.tensors.items() if k != name})
    with pytest.raises(BlobFormatError, match="missing"):
        decode_snapshot(encode_snapshot(missing))
    extra = replace(weights, tensors={**weights.tensors, "head.extra": np.zeros(2, np.float32)})
    with pytest.raises(BlobFormatError, match="unexpected"):
        decode_snapshot(encode_snapshot(extra))


def test_a_delta_without_start_row_is_refused() -> None:
    weights = random_weights(4, SMALL)

    def drop_start_row(header: dict) -> None:
        del header["__metadata__"]["start_row"]

    blob = edit_header(encode_delta(_delta(weights, ["n"])), drop_start_row)
    with pytest.raises(BlobFormatError, match="start_row"):
        decode_delta(blob, SPEC)


@pytest.mark.parametrize(
    ("rows", "why"),
    [([1, 99], "outside"), ([1, 2], "missing from the delta"), ([-1, 4], "outside")],
)
def test_a_delta_whose_rows_do_not_fit_is_refused(rows: list[int], why: str) -> None:
    weights = random_weights(4, SMALL)
    delta = replace(_delta(weights, ["n"]), rows=np.array(rows, dtype=np.int64))
    with pytest.raises(BlobFormatError, match=why):
        decode_delta(encode_delta(delta), SPEC)


def test_a_delta_row_of_the_wrong_width_is_refused() -> None:
    weights = random_weights(4, SMALL)
    delta = _delta(weights, ["n"])
    delta.row_values[ITEM_TABLE] = np.zeros((2, 8), dtype=np.float32)
    with pytest.raises(BlobFormatError, match="row.head.item_table"):
        decode_delta(encode_delta(delta), SPEC)
