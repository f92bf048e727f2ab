"""The scorer's top K: exactly a full sort of ``score_batch``, with exclusions and filters."""

from __future__ import annotations

from unittest.mock import patch

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from online_models.model import scorer as scorer_module
from online_models.model.recommender import random_weights
from online_models.model.scorer import BLOCK_ROWS, SessionScorer, block_top_k
from streamrec.settings import ModelSettings

SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=5)
# Few distinct values, so ties across blocks are common.
values = st.sampled_from([-np.inf, -2.0, 0.0, 0.5, 1.0, 3.0, np.inf, np.nan])


@given(
    arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 12).map(lambda b: b * 32)),
           elements=values),
    st.integers(1, 70),
    st.booleans(),
)  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_block_top_k_equals_a_full_sort_with_nan_last(
    scores: np.ndarray, k: int, selects: bool
) -> None:
    # CPU code asks whether there is a NaN; a GPU's puts NaN last without asking
    with patch.object(scorer_module, "selects_freely", lambda device: selects):
        best, columns = block_top_k(torch.from_numpy(scores.copy()), k)
    nan_last = np.where(np.isnan(scores), -np.inf, scores)
    expected = -np.sort(-nan_last, axis=1)[:, :k]
    np.testing.assert_array_equal(best.numpy(), expected)
    np.testing.assert_array_equal(np.take_along_axis(nan_last, columns.numpy(), 1), expected)
    for line in columns.numpy():
        assert len(set(line.tolist())) == len(line), "a column is returned once"


@pytest.fixture(scope="module")
def scorer() -> SessionScorer:
    return SessionScorer.from_weights(random_weights(1000, SMALL), SMALL)


def full_sort(row: np.ndarray, k: int, pool: np.ndarray | None = None) -> np.ndarray:
    pool = np.arange(len(row)) if pool is None else pool
    return pool[np.argsort(-row[pool], kind="stable")][:k]


def test_top_k_batch_is_score_batch_ranked(scorer: SessionScorer) -> None:
    histories = [["item-1", "item-5"], ["item-9"], ["item-3", "item-3", "item-700"]]
    matrix = scorer.score_batch(histories)
    assert matrix.shape == (3, 1000) and 1000 % BLOCK_ROWS != 0, "the last block is partial"
    answers = scorer.top_k_batch(histories, 25)
    for row, (rows, scores) in zip(matrix, answers, strict=True):
        assert rows.tolist() == full_sort(row, 25).tolist()
        np.testing.assert_array_equal(scores, row[rows])
    assert set(answers[2][0][:2].tolist()) == {3, 700}, "the session's items come first"


def test_exclusions_and_candidates_apply_per_history(scorer: SessionScorer) -> None:
    histories = [["item-1"], ["item-2"], ["item-4"]]
    matrix = scorer.score_batch(histories)
    skipped = full_sort(matrix[0], 5)
    category = np.arange(0, 1000, 7)
    answers = scorer.top_k_batch(
        histories, 10, excluded=[skipped, None, np.array([7])], candidates=[None, None, category]
    )
    assert not set(answers[0][0].tolist()) & set(skipped.tolist())
    assert answers[0][0].tolist() == [r for r in full_sort(matrix[0], 15) if r not in skipped]
    assert answers[1][0].tolist() == full_sort(matrix[1], 10).tolist()
    assert answers[2][0].tolist() == [r for r in full_sort(matrix[2], 11, category) if r != 7]


def test_an_unknown_category_and_a_large_k_return_what_exists(scorer: SessionScorer) -> None:
    [(rows, scores)] = scorer.top_k_batch([["item-1"]], 5, candidates=[np.empty(0, np.int64)])
    assert rows.size == 0 and scores.size == 0
    [(rows, _)] = scorer.top_k_batch([["item-1"]], 5000)
    assert sorted(rows.tolist()) == list(range(1000)), "padding rows are never returned"
