"""top_k: the best K rows by score, with candidate and exclusion sets."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from serving.top_k import top_k

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@given(arrays(np.float32, st.integers(1, 300), elements=finite), st.integers(1, 50))
@settings(max_examples=200, deadline=None)
def test_top_k_equals_a_full_sort(scores: np.ndarray, k: int) -> None:
    rows, best = top_k(scores.copy(), k)
    expected = np.sort(scores)[::-1][:k]
    np.testing.assert_array_equal(best, expected)
    np.testing.assert_array_equal(scores[rows], best)
    assert len(set(rows.tolist())) == len(rows)


def test_excluded_rows_are_never_returned() -> None:
    scores = np.arange(10, dtype=np.float32)
    rows, _ = top_k(scores, 3, excluded=np.array([9, 7]))
    assert rows.tolist() == [8, 6, 5]


def test_candidates_restrict_the_choice() -> None:
    scores = np.arange(10, dtype=np.float32)
    rows, best = top_k(scores, 2, candidates=np.array([1, 3, 4]), excluded=np.array([4]))
    assert rows.tolist() == [3, 1]
    assert best.tolist() == [3.0, 1.0]


def test_k_larger_than_the_pool_returns_everything_left() -> None:
    scores = np.array([0.5, 2.0, 1.0], dtype=np.float32)
    rows, _ = top_k(scores, 10, excluded=np.array([1]))
    assert rows.tolist() == [2, 0]


def test_nan_scores_rank_last_and_are_not_returned() -> None:
    scores = np.array([np.nan, 1.0, np.nan, 3.0, 2.0], dtype=np.float32)
    rows, best = top_k(scores, 2)
    assert rows.tolist() == [3, 4]
    assert best.tolist() == [3.0, 2.0]


def test_empty_candidates_give_an_empty_answer() -> None:
    rows, best = top_k(np.ones(5, dtype=np.float32), 3, candidates=np.empty(0, np.int64))
    assert rows.size == 0 and best.size == 0
