"""Why an answer holds each item: the parts of its score and the clicks behind them.

An on-call engineer asked "why did session S get item X?" needs what the model really
computed, not a story told next to it. So an explanation is read from the scorer that
ranked the answer (``Scorer.explain``: the same tensors, the same repeat bonus code):

- the parts of each model score: session match (the session vector . the item vector),
  item bias, session-repeat lift (the learned repeat bonus plus the constant lift of
  an item the session clicked) and co-visitation (the blend times the position-weighted
  log1p of how often the item was clicked next after the session's items in recent
  sessions); they add up to the ranking score;
- the session's clicks the history was built from, with the event ids and event times
  the flow stored beside them (``SessionFeatures.events``);
- per item, each click's leave-one-out contribution: how much the item's score drops when
  that click is removed from the history and the session is encoded again. The top one
  is the click that contributed most (none when no click raised the score).

A popular-items answer says it is the fallback and why (``FALLBACK_REASONS``), with each
item's popularity score; an exploration slot says so. Explaining costs one encoder pass
over ``len(history) + 1`` histories and products with the answer's rows only (both
bounded by configuration: the flow's ``history_len`` and serving's ``max_k``), and runs
only for a request that asks (``explain=true``). Everything here is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from serving.experiment_arms import POPULARITY
from serving.hot_swap import ModelSnapshot
from serving.recommender import Recommendation, model_history
from streamrec.session_features import SessionFeatures, decode_session_features

LEAVE_ONE_OUT = "leave_one_out"
MODEL, POPULAR, EXPLORATION = "model", "popularity", "exploration"
# Why popular items answered: the arm serves them by design, no version is loaded, the
# session is unknown (never seen, expired or unreadable), or none of its clicks is an item
# the serving version knows.
FALLBACK_REASONS = ("popularity_arm", "no_model", "unknown_session", "no_known_item")


def with_events(
    raw: dict[bytes, bytes], features: SessionFeatures | None
) -> SessionFeatures | None:
    """``features`` with the click events of the session hash ``raw`` (none when the hash
    was written before they existed or they do not decode)."""
    if features is None:
        return None
    try:
        return decode_session_features(raw, with_events=True)
    except ValueError:
        return features


def fallback_reason(
    arm: str | None, snapshot: ModelSnapshot | None, features: SessionFeatures | None
) -> str:
    """Which of ``FALLBACK_REASONS`` made popular items answer."""
    if arm == POPULARITY:
        return "popularity_arm"
    if snapshot is None:
        return "no_model"
    if features is None:
        return "unknown_session"
    return "no_known_item"


def explain_answer(
    recommendation: Recommendation,
    snapshot: ModelSnapshot | None,
    features: SessionFeatures | None,
) -> dict[str, Any]:
    """The explanation of ``recommendation`` (JSON-ready), which ``snapshot`` ranked from
    ``features`` (read with their events; see ``with_events``)."""
    history = model_history(snapshot, features)
    known: Mapping[str, int] = snapshot.item_rows if snapshot is not None else {}
    events = _events(features, known)
    explored = set(recommendation.explored)
    fallback = recommendation.fallback is not None or snapshot is None or history is None
    items = [
        {
            "item_id": item_id,
            "score": score,
            "source": EXPLORATION if at in explored else POPULAR if fallback else MODEL,
            "popularity": score if fallback and at not in explored else None,
            "session_match": None,
            "item_bias": None,
            "session_repeat": None,
            "co_visitation": None,
            "event_drops": [],
            "top_event_id": None,
        }
        for at, (item_id, score) in enumerate(
            zip(recommendation.item_ids, recommendation.scores, strict=True)
        )
    ]
    reason = None
    if fallback:
        reason = fallback_reason(recommendation.arm, snapshot, features)
    else:
        assert snapshot is not None and history is not None  # not a fallback
        ranked = [item for item in items if item["source"] == MODEL]
        rows = np.fromiter((known[item["item_id"]] for item in ranked), np.int64, len(ranked))
        parts = snapshot.scorer.explain(history, rows)
        event_ids = [event["event_id"] for event in events]
        for column, item in enumerate(ranked):
            drops = parts.drops[:, column].tolist()
            top = int(np.argmax(parts.drops[:, column])) if drops else -1
            item.update(
                session_match=float(parts.match[column]),
                item_bias=float(parts.bias[column]),
                session_repeat=float(parts.repeat[column]),
                co_visitation=float(parts.covisitation[column]),
                event_drops=drops,
                top_event_id=event_ids[top] if top >= 0 and drops[top] > 0 else None,
            )
    return {
        "model_version": recommendation.model_version,
        "arm": recommendation.arm,
        "fallback_reason": reason,
        "attribution": LEAVE_ONE_OUT,
        "events": events,
        "items": items,
    }


def _events(features: SessionFeatures | None, known: Mapping[str, int]) -> list[dict[str, Any]]:
    """The session's clicks as the model read them (oldest first), with event id and time
    where the hash has them (None otherwise), and whether the serving version knows the
    item (an unknown one is skipped by the encoder and contributes nothing)."""
    if features is None:
        return []
    stored = features.events or ((None, None),) * len(features.items)
    return [
        {"event_id": event_id, "ts": ts, "item_id": item_id, "known": item_id in known}
        for item_id, (event_id, ts) in zip(features.items, stored, strict=True)
    ]
