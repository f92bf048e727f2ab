"""The recommendation itself: a session's features + a model snapshot -> top-K items.

Pure functions, no I/O: the HTTP handler reads the session hash, the model's top K and the
popular items and passes them in. ``model_history`` says whether the model can answer (a
model is loaded and the session has a click it knows); if so ``ranking_filters`` says what
the model's top K must skip or keep to and ``rank_items`` turns that top K into the answer,
otherwise ``recommend_popular`` answers, marked ``fallback="popular"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serving.hot_swap import ModelSnapshot
from serving.recommend_request import RecommendRequest
from streamrec.session_features import SessionFeatures

POPULAR = "popular"
CATEGORY_POPULAR_DEPTH = 1000


@dataclass(frozen=True, slots=True)
class Recommendation:
    """What a request is answered with; ``model_version`` is None for a fallback.

    ``arm`` is the experiment arm that answered (``serving.experiment_arms``); ``explored``
    the positions in ``item_ids`` an exploration slot filled (``serving.exploration``).
    """

    item_ids: tuple[str, ...]
    scores: tuple[float, ...]
    model_version: int | None
    fallback: str | None = None
    arm: str | None = None
    explored: tuple[int, ...] = ()


def excluded_ids(request: RecommendRequest, features: SessionFeatures | None) -> set[str]:
    """Items the answer must not contain: the caller's list plus, by default, the bought."""
    excluded = set(request.exclude_items)
    if request.exclude_bought and features is not None:
        excluded.update(features.bought)
    return excluded


def model_history(
    snapshot: ModelSnapshot | None, features: SessionFeatures | None
) -> tuple[str, ...] | None:
    """The click history to score, or None when the popular fallback applies.

    The model has nothing to say without a loaded snapshot, for an unknown or empty
    session, or when no clicked item is known to this model version.
    """
    if snapshot is None or features is None:
        return None
    rows_of = snapshot.item_rows
    if not any(item_id in rows_of for item_id in features.items):
        return None
    return features.items


def ranking_filters(
    snapshot: ModelSnapshot, features: SessionFeatures, request: RecommendRequest
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The rows the model's answer must skip, and the only rows it may hold (or None)."""
    rows_of = snapshot.item_rows
    excluded = [rows_of[i] for i in excluded_ids(request, features) if i in rows_of]
    candidates = snapshot.categories.candidates(request.categories) if request.categories else None
    return (np.asarray(excluded, dtype=np.int64) if excluded else None), candidates


def rank_items(
    snapshot: ModelSnapshot, rows: np.ndarray, scores: np.ndarray, arm: str | None = None
) -> Recommendation:
    """The answer from the model's top-K rows and their scores (best first)."""
    item_ids = snapshot.scorer.item_ids
    return Recommendation(
        item_ids=tuple(map(item_ids.__getitem__, rows.tolist())),
        scores=tuple(scores.tolist()),
        model_version=snapshot.version,
        arm=arm,
    )


def popular_depth(request: RecommendRequest, features: SessionFeatures | None) -> int:
    """How many popular items to read so that K remain after exclusions and filters."""
    if request.categories:
        return CATEGORY_POPULAR_DEPTH
    bought = len(features.bought) if features is not None and request.exclude_bought else 0
    return request.k + len(request.exclude_items) + bought


def recommend_popular(
    popular: Sequence[tuple[str, float]],
    snapshot: ModelSnapshot | None,
    features: SessionFeatures | None,
    request: RecommendRequest,
    arm: str | None = None,
) -> Recommendation:
    """The fallback: the most popular items (best first) that pass the same filters."""
    excluded = excluded_ids(request, features)
    wanted = set(request.categories)
    category_of = snapshot.categories.of_item if snapshot is not None else {}
    picked: list[tuple[str, float]] = []
    for item_id, score in popular:
        if item_id in excluded or (wanted and category_of.get(item_id) not in wanted):
            continue
        picked.append((item_id, score))
        if len(picked) == request.k:
            break
    return Recommendation(
        item_ids=tuple(item_id for item_id, _ in picked),
        scores=tuple(score for _, score in picked),
        model_version=None,
        fallback=POPULAR,
        arm=arm,
    )
