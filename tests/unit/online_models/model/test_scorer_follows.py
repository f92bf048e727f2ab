"""A scorer built from the one serving the version before: the same tables and answers as
one built afresh, from only the rows that changed, and the earlier scorer left as it was."""

from __future__ import annotations

from dataclasses import replace
from unittest.mock import patch

import numpy as np
import torch

from online_models.model import scorer
from online_models.model.item_index import ItemIndex
from online_models.model.recommender import random_weights
from online_models.model.scorer import PACK_ROWS, Int4Table, SessionScorer
from online_models.model.weights import (
    ITEM_BIAS,
    ITEM_TABLE,
    ModelWeights,
    RowChanges,
    WeightDelta,
    apply_deltas,
)
from streamrec.settings import ModelSettings

SMALL = ModelSettings(
    hidden_size=16, num_layers=1, num_heads=2, max_seq_len=5, scorer_shortlists="on"
)
ITEMS = 1000  # 1,024 padded rows; with 90 new items 1,120: a last block of half PACK_ROWS


def padded_bias(bias: torch.Tensor) -> torch.Tensor:
    """``bias`` padded to whole blocks of 32 rows with -inf, as the scorer pads it."""
    padded = torch.full((-(-len(bias) // 32) * 32,), float("-inf"))
    padded[: len(bias)] = bias
    return padded


def assert_same_tables(left: Int4Table, right: Int4Table) -> None:
    assert torch.equal(left.packed, right.packed)
    assert torch.equal(left.scales_and_offsets, right.scales_and_offsets)
    assert torch.equal(left.bias, right.bias)


def test_an_updated_int4_table_is_the_table_quantised_afresh() -> None:
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(ITEMS, 16, generator=generator)
    bias = torch.randn(ITEMS, generator=generator)
    earlier = Int4Table.quantise(table, padded_bias(bias))
    rng = np.random.default_rng(1)
    changed = np.unique(rng.integers(0, ITEMS, 25))
    # rows changed in place, no new item
    later = table.clone()
    later[changed] = torch.randn(len(changed), 16, generator=generator)
    assert_same_tables(
        earlier.updated(later, padded_bias(bias), changed),
        Int4Table.quantise(later, padded_bias(bias)),
    )
    # and 90 new items: the table grows past its last, partial block
    grown = torch.cat([later, torch.randn(90, 16, generator=generator)])
    grown_bias = torch.cat([bias, torch.zeros(90)])
    rows = np.concatenate([changed, np.arange(ITEMS, ITEMS + 90)])
    updated = earlier.updated(grown, padded_bias(grown_bias), rows)
    assert len(updated.packed) % PACK_ROWS != 0, "the case of a last, shorter block"
    assert_same_tables(updated, Int4Table.quantise(grown, padded_bias(grown_bias)))
    # the earlier table is untouched: its requests may still be reading it
    assert_same_tables(earlier, Int4Table.quantise(table, padded_bias(bias)))


def next_version(weights: ModelWeights, rows: np.ndarray, new_ids: list[str]) -> ModelWeights:
    """``weights`` plus a delta changing ``rows`` and adding ``new_ids``, loaded as the
    registry loads it from weights a follower holds (so ``changes`` is set)."""
    rng = np.random.default_rng(2)
    touched = np.concatenate([rows, np.arange(len(new_ids)) + weights.n_items])
    delta = WeightDelta(
        version=weights.version + 1,
        parent=weights.version,
        start_row=weights.n_items,
        new_item_ids=new_ids,
        rows=touched,
        row_values={
            ITEM_TABLE: rng.standard_normal((len(touched), 16)).astype(np.float32),
            ITEM_BIAS: rng.standard_normal(len(touched)).astype(np.float32),
        },
        dense={},
    )
    changes = RowChanges(weights.version, np.unique(touched))
    return replace(apply_deltas(weights, [delta]), changes=changes)


def test_a_scorer_following_a_delta_answers_as_one_built_afresh() -> None:
    first = random_weights(ITEMS, SMALL, seed=4)
    serving = SessionScorer.from_weights(first, SMALL)
    rng = np.random.default_rng(5)
    histories = [
        [f"item-{row}" for row in rng.integers(0, ITEMS, int(rng.integers(1, 5)))]
        for _ in range(30)
    ]
    before = serving.top_k_batch(histories, 20)
    new_ids = [f"new-{n}" for n in range(90)]
    second = next_version(first, np.unique(rng.integers(0, ITEMS, 40)), new_ids)
    assert second.changes is not None and second.changes.base == first.version
    followed = SessionScorer.from_weights(second, SMALL, previous=serving)
    fresh = SessionScorer.from_weights(second, SMALL)
    assert followed.shortlists and followed._int4 is not None and fresh._int4 is not None
    assert_same_tables(followed._int4, fresh._int4)
    assert followed.item_ids == fresh.item_ids == [*first.item_ids, *new_ids]
    later = [*histories, ["new-3", "item-7"], ["new-89"]]
    for (rows, scores), (want_rows, want_scores) in zip(
        followed.top_k_batch(later, 20), fresh.top_k_batch(later, 20), strict=True
    ):
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(scores, want_scores)
    # the scorer still serving the earlier version answers as it did
    assert len(serving.item_ids) == ITEMS
    for (rows, scores), (want_rows, want_scores) in zip(
        serving.top_k_batch(histories, 20), before, strict=True
    ):
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(scores, want_scores)


def test_a_scorer_following_a_delta_has_the_columns_of_one_built_afresh() -> None:
    exact = SMALL.model_copy(update={"scorer_shortlists": "off"})
    first = random_weights(ITEMS, exact, seed=7)
    serving = SessionScorer.from_weights(first, exact)
    earlier = serving._columns
    assert earlier is not None
    before = earlier.clone()
    rng = np.random.default_rng(8)
    # rows moved in place, then 90 new items: the padded width grows
    second = next_version(first, np.unique(rng.integers(0, ITEMS, 40)), [])
    third = next_version(
        second, np.unique(rng.integers(0, ITEMS, 40)), [f"n{i}" for i in range(90)]
    )
    with patch.object(scorer, "_item_columns", wraps=scorer._item_columns) as built:
        followed = SessionScorer.from_weights(second, exact, previous=serving)
    assert built.call_args.args[3][0] is earlier  # written from the serving scorer's
    assert followed._columns is not None and followed._columns.shape == earlier.shape
    assert torch.equal(followed._columns, SessionScorer.from_weights(second, exact)._columns)
    grown = SessionScorer.from_weights(third, exact, previous=followed)
    assert grown._columns is not None and grown._columns.shape[1] > earlier.shape[1]
    assert torch.equal(grown._columns, SessionScorer.from_weights(third, exact)._columns)
    assert torch.equal(serving._columns, before), "the serving scorer's columns are not written"


def test_the_scorer_reads_the_weights_rows_without_copying_them() -> None:
    weights = random_weights(ITEMS, SMALL, seed=6)
    scorer = SessionScorer.from_weights(weights, SMALL)
    model_rows = scorer._model.item_table.detach().numpy()
    assert np.shares_memory(model_rows, weights.tensors[ITEM_TABLE])


def test_an_index_follows_a_version_that_only_adds_ids() -> None:
    earlier = ItemIndex(["a", "b", "c"])
    assert ItemIndex.following(earlier, list(earlier.ids)) is earlier
    grown = ItemIndex.following(earlier, ["a", "b", "c", "d"])
    assert grown.row("d") == 3 and grown.row("a") == 0
    assert "d" not in earlier and len(earlier) == 3, "the earlier index is not changed"
    # anything else is indexed afresh, as the constructor does
    assert ItemIndex.following(earlier, ["b", "a"]).rows_of(["a", "b"]).tolist() == [1, 0]
    repeated = ItemIndex.following(earlier, ["a", "b", "c", "a", "e"])
    assert repeated.ids == ItemIndex(["a", "b", "c", "a", "e"]).ids
