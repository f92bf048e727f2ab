"""``SessionScorer.explain``: the parts of a score add up to it, and leave-one-out is exact."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.model.item_index import ItemIndex
from online_models.model.recommender import (
    REPEAT_BONUS,
    SESSION_ITEM_LIFT,
    SessionRecommender,
    random_weights,
)
from online_models.model.scorer import SessionScorer
from online_models.model.weights import ITEM_BIAS, ModelWeights
from streamrec.settings import ModelSettings

SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=5)


def weights_with_bias_and_bonus() -> ModelWeights:
    weights = random_weights(60, SMALL, seed=4)
    rng = np.random.default_rng(2)
    weights.tensors[ITEM_BIAS] = rng.normal(0, 0.5, 60).astype(np.float32)
    weights.tensors[REPEAT_BONUS] = rng.normal(0, 0.5, SMALL.max_seq_len).astype(np.float32)
    return weights


# A bfloat16 table ranks by the sum rounded to bfloat16 (8 bits of mantissa).
@pytest.mark.parametrize(("dtype", "atol"), [("float32", 1e-4), ("bfloat16", 2e-2)])
def test_the_parts_sum_to_the_ranking_score(dtype: str, atol: float) -> None:
    scorer = SessionScorer(*_model_and_index(), table_dtype=dtype)
    history = ["item-3", "item-8", "item-3", "nobody-knows", "item-11"]
    rows, scores = scorer.top_k_batch([history], 10)[0]
    parts = scorer.explain(history, rows)
    total = parts.match + parts.bias + parts.repeat
    np.testing.assert_allclose(total, scores, rtol=1e-5, atol=atol)
    by_item = dict(zip((scorer.item_ids[r] for r in rows.tolist()), parts.repeat, strict=True))
    # item-3 was clicked twice: lifted twice; an item outside the session gets no repeat part
    assert by_item["item-3"] > 2 * SESSION_ITEM_LIFT - 10
    assert all(by_item[i] == 0 for i in by_item if i not in history)


def test_a_drop_is_the_score_lost_when_that_click_is_left_out() -> None:
    scorer = SessionScorer(*_model_and_index())
    history = ["item-3", "item-8", "item-20"]
    rows = np.array([5, 8, 40])
    parts = scorer.explain(history, rows)
    assert parts.drops.shape == (3, 3)
    full = scorer.score(history)[rows]
    for j in range(len(history)):
        without = scorer.score(history[:j] + history[j + 1 :])[rows]
        np.testing.assert_allclose(parts.drops[j], full - without, rtol=1e-5, atol=1e-3)
    # Leaving out the click on item-8 costs item-8 its session lift.
    assert parts.drops[1, 1] > SESSION_ITEM_LIFT / 2


def test_an_unknown_click_contributes_nothing() -> None:
    scorer = SessionScorer(*_model_and_index())
    parts = scorer.explain(["item-3", "never-seen"], np.array([1, 2]))
    np.testing.assert_array_equal(parts.drops[1], [0.0, 0.0])


def _model_and_index() -> tuple[SessionRecommender, ItemIndex, int]:
    """What ``SessionScorer(...)`` is built from, for a model with bias and repeat bonus."""
    weights = weights_with_bias_and_bonus()
    return SessionRecommender.from_weights(weights), ItemIndex(weights.item_ids), weights.version
