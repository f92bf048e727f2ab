"""Exploration slots: a few places per list for items shoppers have hardly been shown.

A model ranks by what it has seen clicked, so an item that was never shown is never
clicked and never ranked: the cold-start loop. An exploration slot breaks it by giving a
new item (shown fewer than ``explore_max_shown`` times) a place, chosen by Thompson
sampling on its click-through rate: each candidate draws a CTR from
Beta(1 + clicks, 1 + shown - clicks) and the highest draws win. Unshown items draw from
Beta(1, 1) (anything is possible); items that were shown and ignored sink.

Costs are bounded and off the request path where they can be:

- ``NewItemPool`` re-reads the exposure counts (the flow's ``items:shown`` and
  ``items:clicked`` hashes) every ``explore_refresh_s`` on a background thread and keeps
  the items the online model knows that are still new; a request never reads Redis for it.
- ``explore`` (pure) draws ``explore_sample`` candidates at random from the pool (with
  replacement: no pass over the pool; a smaller pool is taken whole), samples their CTRs
  with the caller's seeded generator (``exploration_rng``: one stream per worker) and
  fills the slots with the best that are not on the list already, not excluded and in the
  requested categories.

An explored item takes the list's last places (the list keeps its length K) with the
score of the last model item kept, and its position goes into ``Recommendation.explored``
and the impression, so its clicks are measured apart from the model's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from serving.hot_swap import ModelHolder
from serving.recommender import Recommendation
from streamrec.redis_connection import REDIS_ERRORS, RedisClient
from streamrec.redis_keys import RedisKeys
from streamrec.structured_log import log_event

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NewItems:
    """The items that may be explored, with their exposure counts (same order)."""

    item_ids: tuple[str, ...] = ()
    clicks: np.ndarray = field(default_factory=lambda: np.zeros(0))
    shown: np.ndarray = field(default_factory=lambda: np.zeros(0))


def new_items(
    known: Sequence[str],
    shown: Mapping[str, int],
    clicked: Mapping[str, int],
    max_shown: int,
) -> NewItems:
    """The ``known`` items shown fewer than ``max_shown`` times (never shown: 0)."""
    picked = [item for item in known if shown.get(item, 0) < max_shown]
    return NewItems(
        tuple(picked),
        np.array([clicked.get(item, 0) for item in picked], dtype=np.float64),
        np.array([shown.get(item, 0) for item in picked], dtype=np.float64),
    )


def explore(
    recommendation: Recommendation,
    pool: NewItems,
    *,
    slots: int,
    k: int,
    sample: int,
    excluded: Container[str],
    allowed: Callable[[str], bool] | None,
    rng: np.random.Generator,
) -> Recommendation:
    """``recommendation`` with up to ``slots`` of its last places given to new items.

    Deterministic for a given generator state. Never adds an item already on the list,
    one in ``excluded``, or one ``allowed`` refuses; with no eligible candidate drawn the
    recommendation is returned unchanged.
    """
    count = len(pool.item_ids)
    if count == 0 or slots == 0:
        return recommendation
    drawn = np.arange(count) if count <= sample else rng.integers(0, count, size=sample)
    clicks = pool.clicks[drawn]
    misses = np.maximum(pool.shown[drawn] - clicks, 0.0)
    ctr = rng.beta(1.0 + clicks, 1.0 + misses)
    on_list = set(recommendation.item_ids)
    chosen: list[str] = []
    for index in drawn[np.argsort(-ctr, kind="stable")].tolist():
        item = pool.item_ids[index]
        if item in on_list or item in excluded or (allowed is not None and not allowed(item)):
            continue
        on_list.add(item)
        chosen.append(item)
        if len(chosen) == slots:
            break
    if not chosen:
        return recommendation
    kept = min(len(recommendation.item_ids), k - len(chosen))
    scores = recommendation.scores[:kept]
    filler = scores[-1] if scores else 0.0
    return replace(
        recommendation,
        item_ids=(*recommendation.item_ids[:kept], *chosen),
        scores=(*scores, *([filler] * len(chosen))),
        explored=tuple(range(kept, kept + len(chosen))),
    )


def exploration_rng(seed: int, worker_index: int) -> np.random.Generator:
    """The exploration draws of one worker: reproducible for (``seed``, ``worker_index``).

    Workers share ``explore_seed``; mixing in the worker's index (a seed sequence, so
    nearby seeds and indexes give independent streams) keeps them from drawing the same
    sequence, which would explore the same items in every worker. A restarted worker
    keeps its index, so a run replays the same way.
    """
    return np.random.default_rng(np.random.SeedSequence((seed, worker_index)))


class NewItemPool:
    """The current ``NewItems``, refreshed from Redis on a background thread.

    ``current`` is replaced whole (one reference assignment), so a request reads a
    consistent pool without a lock. Until the first refresh (or while Redis fails) the
    pool is what it was, empty at start: exploration then leaves lists unchanged.
    """

    def __init__(
        self,
        client: RedisClient,
        keys: RedisKeys,
        holder: ModelHolder,
        *,
        max_shown: int,
        refresh_s: float,
    ) -> None:
        self.client = client
        self.keys = keys
        self.holder = holder
        self.max_shown = max_shown
        self.refresh_s = refresh_s
        self.current = NewItems()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="new-items", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def refresh(self) -> None:
        """Read the exposure counts once and rebuild the pool for the serving model."""
        snapshot = self.holder.current
        if snapshot is None:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.item_shown)
        pipe.hgetall(self.keys.item_clicked)
        shown_raw, clicked_raw = pipe.execute()
        self.current = new_items(
            snapshot.scorer.item_ids, _counts(shown_raw), _counts(clicked_raw), self.max_shown
        )

    def _run(self) -> None:
        while True:
            try:
                self.refresh()
            except (*REDIS_ERRORS, ValueError) as exc:  # kept as is; read again next period
                log_event(
                    logger, "new_items_refresh_failed", logging.WARNING, error=repr(exc)[:300]
                )
            if self._stop.wait(self.refresh_s):
                return


def _counts(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    return {item.decode(): int(count) for item, count in raw.items()}
