"""The serving-side scorer: alignment with item ids, batch == single, exclusions."""

from __future__ import annotations

import numpy as np

from online_models.model.item_index import ItemIndex
from online_models.model.recommender import random_weights
from online_models.model.scorer import SessionScorer
from online_models.model.weights import ITEM_BIAS
from streamrec.settings import ModelSettings

SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=5)


def test_scores_are_float32_and_aligned_with_item_ids() -> None:
    weights = random_weights(50, SMALL)
    weights.tensors[ITEM_BIAS][7] = 100.0  # a huge prior makes item-7 the best for anyone
    scorer = SessionScorer.from_weights(weights, SMALL)
    scores = scorer.score(["item-1", "item-2", "unknown"])
    assert scores.dtype == np.float32 and scores.shape == (50,)
    ranked = [scorer.item_ids[row] for row in np.argsort(-scores)[:3]]
    # The session's own items come first (lifted), then the best of the rest.
    assert set(ranked[:2]) == {"item-1", "item-2"} and ranked[2] == "item-7"
    assert scorer.version == weights.version


def test_session_items_rank_first_in_the_model_order_among_themselves() -> None:
    weights = random_weights(50, SMALL)
    weights.tensors[ITEM_BIAS][3] = 5.0  # item-3 beats item-4 on the model's own score
    scorer = SessionScorer.from_weights(weights, SMALL)
    ids, _ = scorer.top_k(["item-4", "item-3"], 3)
    assert ids[:2] == ["item-3", "item-4"]
    ids, _ = scorer.top_k(["item-4", "item-3", "item-4"], 3)
    assert ids[0] == "item-4"  # clicked twice: lifted twice


def test_batch_scores_match_single_scores_and_unknown_items_are_ignored() -> None:
    scorer = SessionScorer.from_weights(random_weights(40, SMALL), SMALL)
    histories = [["item-3"], ["item-4", "item-9"], []]
    batch = scorer.score_batch(histories)
    for row, history in zip(batch, histories, strict=True):
        np.testing.assert_allclose(row, scorer.score(history), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        scorer.score(["item-3", "never-seen"]), scorer.score(["item-3"]), atol=1e-6
    )


def test_top_k_is_sorted_and_skips_excluded_items() -> None:
    scorer = SessionScorer.from_weights(random_weights(30, SMALL), SMALL)
    best, _ = scorer.top_k(["item-1"], 5)
    ids, values = scorer.top_k(["item-1"], 5, exclude=[best[0]])
    assert best[0] not in ids and len(ids) == 5
    assert list(values) == sorted(values, reverse=True)


def test_bfloat16_table_ranks_like_float32() -> None:
    weights = random_weights(200, SMALL)
    exact = SessionScorer.from_weights(weights, SMALL).score(["item-5"])
    fast = SessionScorer.from_weights(
        weights, SMALL.model_copy(update={"scorer_dtype": "bfloat16"})
    )
    approx = fast.score(["item-5"])
    assert approx.dtype == np.float32
    assert len(set(np.argsort(-exact)[:10]) & set(np.argsort(-approx)[:10])) >= 8


def test_item_index_left_pads_and_keeps_the_latest_items() -> None:
    index = ItemIndex(["a", "b", "c"])
    rows, mask = index.encode_histories([["a", "zz", "b", "c"], []], max_len=2)
    assert rows.tolist() == [[1, 2], [0, 0]]
    assert mask.tolist() == [[1, 1], [0, 0]]
    assert index.add_all(["c", "d", "d"]) == ["d"] and index.row("d") == 3


def test_item_index_built_from_repeated_ids_keeps_each_first_row() -> None:
    index = ItemIndex(["a", "b", "a", "c", "b"])
    assert index.ids == ["a", "b", "c"] and dict(index.rows) == {"a": 0, "b": 1, "c": 2}
    assert index.add("d") == 3 and index.rows_of(["c", "x", "d"]).tolist() == [2, -1, 3]
