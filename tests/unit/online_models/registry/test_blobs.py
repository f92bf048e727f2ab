"""Snapshot/delta encoding and delta application (pure, no Redis)."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.model.recommender import random_weights
from online_models.model.weights import (
    ITEM_BIAS,
    ITEM_TABLE,
    DeltaMismatchError,
    WeightDelta,
    apply_delta,
)
from online_models.registry.blobs import (
    BlobFormatError,
    decode_delta,
    decode_snapshot,
    encode_delta,
    encode_snapshot,
)
from streamrec.settings import ModelSettings

SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=5)


def test_snapshot_round_trip_keeps_every_tensor_and_odd_item_ids() -> None:
    weights = random_weights(6, SMALL)
    weights.item_ids[2] = "id,with\nnewline\x00and-é"
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
    delta = decode_delta(encode_delta(_delta(weights, ["new-a", "new-b"])))
    updated = apply_delta(weights, delta)
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
        apply_delta(weights, delta)


def test_garbage_is_not_a_blob() -> None:
    with pytest.raises(BlobFormatError):
        decode_delta(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(BlobFormatError):
        decode_delta(encode_snapshot(random_weights(2, SMALL)))
