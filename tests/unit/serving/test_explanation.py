"""Explanations: the parts add up to the answer's scores, the clicks are named, the
fallback says why, and the body matches its documented schema."""

from __future__ import annotations

from dataclasses import replace
from typing import get_args

import numpy as np
import pytest

from online_models.model.recommender import REPEAT_BONUS, random_weights
from online_models.model.scorer import SessionScorer
from online_models.model.weights import ITEM_BIAS
from serving.experiment_arms import POPULARITY
from serving.explanation import FALLBACK_REASONS, explain_answer, with_events
from serving.hot_swap import ModelSnapshot
from serving.openapi import Explanation
from serving.recommend_request import RecommendRequest
from serving.recommender import Recommendation, rank_items, recommend_popular
from streamrec.session_features import SessionFeatures, encode_session_features
from streamrec.settings import ModelSettings

SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=5)
EVENTS = (("ev-a", 1000), ("ev-b", 2000), ("ev-c", 3000))
SESSION = SessionFeatures(
    ("item-4", "unknown-item", "item-9"), 3, 0, (), {}, 1000, 3000, 1000, 0, EVENTS
)


@pytest.fixture(scope="module")
def snapshot() -> ModelSnapshot:
    weights = random_weights(40, SMALL, seed=1)
    rng = np.random.default_rng(3)
    weights.tensors[ITEM_BIAS] = rng.normal(0, 0.3, 40).astype(np.float32)
    weights.tensors[REPEAT_BONUS] = rng.normal(0, 0.3, SMALL.max_seq_len).astype(np.float32)
    weights = replace(weights, version=7)
    return ModelSnapshot.build(SessionScorer.from_weights(weights, SMALL), "startup")


def ranked(snapshot: ModelSnapshot, k: int = 6) -> Recommendation:
    [(rows, scores)] = snapshot.scorer.top_k_batch([SESSION.items], k)
    return rank_items(snapshot, rows, scores, "online")


def test_the_parts_of_each_model_score_add_up_to_it(snapshot: ModelSnapshot) -> None:
    recommendation = ranked(snapshot)
    explanation = explain_answer(recommendation, snapshot, SESSION)
    assert (explanation["model_version"], explanation["arm"]) == (7, "online")
    assert explanation["fallback_reason"] is None
    for item, score in zip(explanation["items"], recommendation.scores, strict=True):
        total = sum(
            item[part] for part in ("session_match", "item_bias", "session_repeat", "co_visitation")
        )
        assert item["source"] == "model" and item["popularity"] is None
        assert total == pytest.approx(score, rel=1e-5, abs=1e-4)
    Explanation.model_validate(explanation)  # the documented shape


def test_the_events_are_the_sessions_clicks_and_its_own_click_lifts_an_item_most(
    snapshot: ModelSnapshot,
) -> None:
    explanation = explain_answer(ranked(snapshot), snapshot, SESSION)
    assert explanation["events"] == [
        {"event_id": "ev-a", "ts": 1000, "item_id": "item-4", "known": True},
        {"event_id": "ev-b", "ts": 2000, "item_id": "unknown-item", "known": False},
        {"event_id": "ev-c", "ts": 3000, "item_id": "item-9", "known": True},
    ]
    by_item = {item["item_id"]: item for item in explanation["items"]}
    # The session's own items rank first, lifted by their own click.
    assert by_item["item-4"]["top_event_id"] == "ev-a"
    assert by_item["item-9"]["top_event_id"] == "ev-c"
    for item in explanation["items"]:
        assert len(item["event_drops"]) == 3
        assert item["event_drops"][1] == 0.0  # an item the model does not know changes nothing


def test_an_exploration_slot_is_marked_and_not_scored(snapshot: ModelSnapshot) -> None:
    recommendation = replace(ranked(snapshot), explored=(2,))
    items = explain_answer(recommendation, snapshot, SESSION)["items"]
    assert items[2]["source"] == "exploration" and items[2]["session_match"] is None
    assert [item["source"] for item in items].count("model") == len(items) - 1


POPULAR_ITEMS = [("item-30", 9.0), ("item-31", 4.0)]


@pytest.mark.parametrize(
    ("arm", "has_model", "session", "reason"),
    [
        (POPULARITY, True, SESSION, "popularity_arm"),
        ("online", False, SESSION, "no_model"),
        ("online", True, None, "unknown_session"),
        ("online", True, replace(SESSION, items=("x",), events=(("ev-x", 5),)), "no_known_item"),
    ],
)
def test_a_fallback_says_why_with_the_popularity_scores(
    snapshot: ModelSnapshot,
    arm: str,
    has_model: bool,
    session: SessionFeatures | None,
    reason: str,
) -> None:
    serving = snapshot if has_model else None
    request = RecommendRequest("s", 2)
    recommendation = recommend_popular(POPULAR_ITEMS, serving, session, request, arm)
    explanation = explain_answer(recommendation, None if arm == POPULARITY else serving, session)
    assert explanation["fallback_reason"] == reason
    assert explanation["model_version"] is None
    assert [(i["source"], i["popularity"]) for i in explanation["items"]] == [
        ("popularity", 9.0),
        ("popularity", 4.0),
    ]
    Explanation.model_validate(explanation)


def test_a_hash_written_before_events_existed_explains_without_event_ids(
    snapshot: ModelSnapshot,
) -> None:
    raw = {name.encode(): value for name, value in encode_session_features(SESSION).items()}
    assert with_events(raw, replace(SESSION, events=())) == SESSION
    del raw[b"events"]
    old = with_events(raw, replace(SESSION, events=()))
    explanation = explain_answer(ranked(snapshot), snapshot, old)
    assert [event["event_id"] for event in explanation["events"]] == [None, None, None]
    assert all(item["top_event_id"] is None for item in explanation["items"])
    Explanation.model_validate(explanation)


def test_the_documented_fallback_reasons_are_the_ones_given() -> None:
    annotation = Explanation.model_fields["fallback_reason"].annotation
    [literal] = [arg for arg in get_args(annotation) if arg is not type(None)]
    assert set(get_args(literal)) == set(FALLBACK_REASONS)
