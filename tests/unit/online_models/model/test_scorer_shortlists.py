"""Top-K over a large catalog: int4 shortlists ranked exactly, against the exact pass."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.model.recommender import random_weights
from online_models.model.scorer import SHORTLIST_MIN_ITEMS, Int4Table, SessionScorer
from online_models.model.weights import COVIS_ITEMS, COVIS_WEIGHT, ITEM_BIAS
from streamrec.settings import ModelSettings

SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=5)
ITEMS = 300_000
NEIGHBOURS = np.array([11, 222_222, 299_999])  # item-1's co-visitation neighbours


@pytest.fixture(scope="module")
def scorer() -> SessionScorer:
    weights = random_weights(ITEMS, SMALL, seed=1)
    rng = np.random.default_rng(0)
    weights.tensors[ITEM_BIAS][:] = rng.normal(0, 0.3, ITEMS).astype(np.float32)
    weights.tensors[ITEM_BIAS][NEIGHBOURS] = -1.0  # far from the top 20 on their own
    weights.tensors[COVIS_ITEMS][1, :3] = NEIGHBOURS
    weights.tensors[COVIS_WEIGHT][1, :3] = [1e3, 1e5, 1e7]
    scorer = SessionScorer.from_weights(weights, SMALL)
    assert ITEMS >= SHORTLIST_MIN_ITEMS and scorer.shortlists
    return scorer


def exact_hits(scorer: SessionScorer, history: list[str], rows: np.ndarray, k: int) -> int:
    """How many of ``rows`` belong to an exact top ``k`` (bfloat16 scores tie: any tied
    item is a correct answer)."""
    scores = scorer.score(history)
    return int(np.sum(scores[rows] >= np.sort(scores)[-k]))


def test_the_answers_are_the_exact_top_k_with_exact_scores(scorer: SessionScorer) -> None:
    rng = np.random.default_rng(3)
    histories = [
        [f"item-{row}" for row in rng.integers(0, ITEMS, int(rng.integers(1, 5)))]
        for _ in range(50)
    ]
    answers = scorer.top_k_batch(histories, 20)
    matrix = scorer.score_batch(histories)
    hits = 0
    for history, line, (rows, scores) in zip(histories, matrix, answers, strict=True):
        assert len(rows) == 20 and list(scores) == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, line[rows], rtol=1e-6)
        hits += exact_hits(scorer, history, rows, 20)
    assert hits / (20 * len(histories)) >= 0.99


def test_session_items_then_covisited_items_lead_and_exclusions_hold(
    scorer: SessionScorer,
) -> None:
    history = ["item-7", "item-1"]
    [(rows, _)] = scorer.top_k_batch([history], 10)
    assert set(rows[:2].tolist()) == {1, 7}, "the session's own items are lifted first"
    assert rows[2:5].tolist() == NEIGHBOURS[::-1].tolist(), "then co-visitation's picks"
    excluded = np.array([1, 7, NEIGHBOURS[2]])
    [(rows, _)] = scorer.top_k_batch([history], 10, excluded=[excluded])
    assert not set(rows.tolist()) & set(excluded.tolist())
    assert rows[:2].tolist() == NEIGHBOURS[1::-1].tolist()
    scores = scorer.score(history)
    scores[excluded] = -np.inf
    assert np.sum(scores[rows] >= np.sort(scores)[-10]) == 10


def test_a_category_filter_ranks_its_rows_exactly(scorer: SessionScorer) -> None:
    category = np.arange(3, ITEMS, 997)
    history = ["item-5", "item-6"]
    [(free, _), (rows, scores)] = scorer.top_k_batch(
        [history, history], 15, excluded=[None, category[:2]], candidates=[None, category]
    )
    exact = scorer.score(history)[category]
    expected = category[np.argsort(-exact, kind="stable")]
    expected = expected[~np.isin(expected, category[:2])][:15]
    assert set(rows.tolist()) == set(expected.tolist())
    np.testing.assert_allclose(scores, scorer.score(history)[rows], rtol=1e-6)
    assert exact_hits(scorer, history, free, 15) == 15


def test_a_small_catalog_ranks_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("a small catalog needs no int4 pass")

    monkeypatch.setattr(Int4Table, "scores", refuse)
    scorer = SessionScorer.from_weights(random_weights(1000, SMALL), SMALL)
    assert not scorer.shortlists
    [(rows, scores)] = scorer.top_k_batch([["item-1"]], 20)
    line = scorer.score(["item-1"])
    assert rows.tolist() == np.argsort(-line, kind="stable")[:20].tolist()


def test_quantised_rows_are_within_half_a_step_of_their_group() -> None:
    import torch

    table = torch.randn(100, 40) * torch.logspace(-3, 1, 100)[:, None]
    table[5] = 0.0
    table[6] = 3.0  # a constant row: every group's range is empty
    quantised = Int4Table.quantise(table, torch.zeros(128))
    assert quantised.scales_and_offsets.shape == (2, 128, 2)  # 40 columns: two groups of 32
    eye = torch.eye(64)  # one query per column reads the restored rows back
    restored = (quantised.scores(eye) - quantised.bias).T[:100, :40]
    scales = quantised.scales_and_offsets[..., 0].float().T[:100]  # rows x groups
    step = scales.repeat_interleave(32, dim=1)[:, :40]
    # half a step of rounding, and bfloat16's rounding of the restored value
    bound = step * 0.5 + table.abs() * 2**-8 + 1e-30
    assert torch.all((restored - table).abs() <= bound)
    assert torch.all(restored[5] == 0) and torch.allclose(restored[6], table[6], rtol=2**-8)
    padding = quantised.scores(torch.ones(1, 40))[0, 100:]
    assert torch.all(padding == 0), "padding rows restore to zero"
