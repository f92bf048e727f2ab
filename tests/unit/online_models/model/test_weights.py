"""Weights as plain data: deltas applied with one copy, sharing what they leave alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from online_models.model.recommender import random_weights
from online_models.model.weights import (
    COVIS_ITEMS,
    ITEM_BIAS,
    ITEM_TABLE,
    DeltaMismatchError,
    WeightDelta,
    apply_deltas,
)
from streamrec.settings import ModelSettings

SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=5)


def delta_on(parent: int, n_items: int, rows: list[int], new_ids: list[str]) -> WeightDelta:
    touched = np.array([*rows, *range(n_items, n_items + len(new_ids))], dtype=np.int64)
    return WeightDelta(
        version=parent + 1,
        parent=parent,
        start_row=n_items,
        new_item_ids=new_ids,
        rows=touched,
        row_values={
            ITEM_TABLE: np.ones((len(touched), 16), dtype=np.float32),
            ITEM_BIAS: np.ones(len(touched), dtype=np.float32),
        },
        dense={},
    )


def test_a_delta_shares_the_row_tensors_it_leaves_alone() -> None:
    weights = random_weights(10, SMALL)
    later = apply_deltas(weights, [delta_on(0, 10, [2], [])])
    assert later.tensors[COVIS_ITEMS] is weights.tensors[COVIS_ITEMS]
    assert later.tensors[ITEM_TABLE] is not weights.tensors[ITEM_TABLE]
    assert weights.tensors[ITEM_TABLE][2, 0] != 1.0, "the parent's rows are not written"
    grown = apply_deltas(weights, [delta_on(0, 10, [], ["new"])])
    assert grown.tensors[COVIS_ITEMS].shape[0] == 11 and grown.tensors[COVIS_ITEMS][10, 0] == -1


def test_several_deltas_at_once_give_what_one_after_the_other_gives() -> None:
    weights = random_weights(10, SMALL)
    first = delta_on(0, 10, [2, 4], ["x"])
    second = replace(delta_on(1, 11, [4, 10], ["y"]), version=2)
    second.row_values[ITEM_TABLE][:] = 2.0  # the later write of row 4 wins
    together = apply_deltas(weights, [first, second])
    apart = apply_deltas(apply_deltas(weights, [first]), [second])
    assert together.version == apart.version == 2 and together.parent == 1
    assert together.item_ids == apart.item_ids == [*weights.item_ids, "x", "y"]
    for name, array in apart.tensors.items():
        np.testing.assert_array_equal(together.tensors[name], array)
    assert together.tensors[ITEM_TABLE][4, 0] == 2.0
    assert apply_deltas(weights, []) is weights


@pytest.mark.parametrize(
    ("parent", "start", "rows", "error"),
    [(5, 10, [1], "continues"), (0, 9, [1], "continues"), (0, 10, [11], "out of range")],
)
def test_a_delta_that_does_not_continue_the_weights_is_refused(
    parent: int, start: int, rows: list[int], error: str
) -> None:
    weights = random_weights(10, SMALL)
    delta = replace(delta_on(parent, 10, rows, []), start_row=start)
    with pytest.raises(DeltaMismatchError, match=error):
        apply_deltas(weights, [delta])


def test_finite_checks_of_some_rows_skip_the_others() -> None:
    weights = random_weights(10, SMALL)
    weights.tensors[ITEM_TABLE][4, 0] = np.nan
    assert not weights.all_finite()
    assert weights.all_finite(np.array([1, 2]))
    assert not weights.all_finite(np.array([4]))
