"""From session features and scores to the answer: exclusions, filters, fallback."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.hot_swap import ModelSnapshot
from serving.recommend_request import RecommendRequest
from serving.recommender import (
    POPULAR,
    model_history,
    popular_depth,
    rank_items,
    ranking_filters,
    recommend_popular,
)
from serving.score_batcher import ScoreBatcher
from streamrec.session_features import SessionFeatures
from tests.unit.serving.test_hot_swap import ITEMS, FakeScorer

CATEGORIES = {"i9": "A", "i8": "B", "i7": "A", "i2": "A"}


def features(items: tuple[str, ...], bought: tuple[str, ...] = ()) -> SessionFeatures:
    return SessionFeatures(items, len(items), len(bought), bought, {}, 0, 0, 0)


@pytest.fixture
def snapshot() -> ModelSnapshot:
    return ModelSnapshot.build(FakeScorer(5, ITEMS), "startup", CATEGORIES)


def answer(snapshot: ModelSnapshot, session: SessionFeatures, request: RecommendRequest):
    history = model_history(snapshot, session)
    assert history is not None
    excluded, candidates = ranking_filters(snapshot, session, request)
    [(rows, scores)] = snapshot.scorer.top_k_batch([history], request.k, [excluded], [candidates])
    return rank_items(snapshot, rows, scores)


def test_top_k_comes_from_the_scores_best_first(snapshot: ModelSnapshot) -> None:
    result = answer(snapshot, features(("i1",)), RecommendRequest("s", 3))
    assert result.item_ids == ("i9", "i8", "i7")
    assert result.scores == pytest.approx((9.0, 8.0, 7.0))
    assert result.model_version == 5 and result.fallback is None


def test_bought_items_are_excluded_unless_asked_not_to(snapshot: ModelSnapshot) -> None:
    session = features(("i1",), bought=("i9", "i7"))
    assert answer(snapshot, session, RecommendRequest("s", 2)).item_ids == ("i8", "i6")
    keep = RecommendRequest("s", 2, exclude_bought=False)
    assert answer(snapshot, session, keep).item_ids == ("i9", "i8")


def test_caller_exclusions_and_category_filter(snapshot: ModelSnapshot) -> None:
    request = RecommendRequest("s", 5, categories=("A",), exclude_items=("i9",))
    assert answer(snapshot, features(("i1",)), request).item_ids == ("i7", "i2")


def test_unknown_category_gives_no_items(snapshot: ModelSnapshot) -> None:
    request = RecommendRequest("s", 5, categories=("nope",))
    assert answer(snapshot, features(("i1",)), request).item_ids == ()


def test_fallback_applies_without_model_session_or_known_click(snapshot: ModelSnapshot) -> None:
    assert model_history(None, features(("i1",))) is None
    assert model_history(snapshot, None) is None
    assert model_history(snapshot, features(())) is None
    assert model_history(snapshot, features(("unknown",))) is None
    assert model_history(snapshot, features(("unknown", "i3"))) == ("unknown", "i3")


def test_popular_fallback_is_marked_and_filtered(snapshot: ModelSnapshot) -> None:
    popular = [("i9", 50.0), ("i8", 40.0), ("i7", 30.0), ("i2", 20.0)]
    session = features((), bought=("i9",))
    result = recommend_popular(popular, snapshot, session, RecommendRequest("s", 2))
    assert result.item_ids == ("i8", "i7")
    assert result.fallback == POPULAR and result.model_version is None
    by_category = RecommendRequest("s", 5, categories=("A",), exclude_items=("i7",))
    assert recommend_popular(popular, snapshot, None, by_category).item_ids == ("i9", "i2")


def test_popular_depth_leaves_room_for_exclusions() -> None:
    session = features(("i1",), bought=("a", "b"))
    assert popular_depth(RecommendRequest("s", 10, exclude_items=("x",)), session) == 13
    assert popular_depth(RecommendRequest("s", 10, categories=("A",)), session) >= 100


def test_batcher_ranks_concurrent_requests_in_one_call(snapshot: ModelSnapshot) -> None:
    calls: list[int] = []
    scorer = snapshot.scorer
    original = scorer.top_k_batch

    def counting(histories, k, excluded=(), candidates=()):  # type: ignore[no-untyped-def]
        calls.append(len(histories))
        return original(histories, k, excluded, candidates)

    scorer.top_k_batch = counting  # type: ignore[method-assign]
    batcher = ScoreBatcher(max_batch=16, max_wait_s=1.0)

    async def one(n: int) -> tuple[np.ndarray, np.ndarray]:
        batcher.begin()
        await asyncio.sleep(0)  # stands for the Redis round trip
        skip = np.array([9]) if n == 3 else None
        return await batcher.top_k(snapshot, (f"i{n}",), k=n + 1, excluded=skip)

    async def main() -> list[tuple[np.ndarray, np.ndarray]]:
        return await asyncio.gather(*(one(n) for n in range(4)))

    answers = asyncio.run(main())
    assert calls == [4], "all four requests were in flight together"
    for n, (rows, scores) in enumerate(answers):
        skip = np.array([9]) if n == 3 else None
        [(expected, _)] = original([(f"i{n}",)], n + 1, [skip], [None])
        assert rows.tolist() == expected.tolist(), "each request gets its own k and exclusions"
        np.testing.assert_array_equal(scores, scorer.score((f"i{n}",))[rows])


def test_batcher_does_not_wait_for_requests_that_will_not_score(
    snapshot: ModelSnapshot,
) -> None:
    batcher = ScoreBatcher(max_batch=16, max_wait_s=30.0)

    async def main() -> tuple[np.ndarray, np.ndarray]:
        batcher.begin()
        batcher.begin()
        scoring = asyncio.ensure_future(batcher.top_k(snapshot, ("i1",), k=3))
        await asyncio.sleep(0)
        batcher.end()  # the other request fell back to popular items
        return await asyncio.wait_for(scoring, 5)

    rows, _ = asyncio.run(main())
    assert rows.tolist() == [9, 8, 7]
    assert batcher.in_flight == 0
