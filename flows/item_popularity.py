"""Recent item popularity: exponentially decayed event counts, in event time.

Scores use the growth form ``sum(weight * 2 ** ((ts - ref) / half_life))`` with a reference
time ``ref`` instead of decaying every score at every step: an item's score changes only
when it has a new event, so a batch rewrites only the items it touched, and ranking by
score equals ranking by decayed count at any moment. ``ref`` is a multiple of
``REBASE_HALF_LIVES`` half-lives, derived from event time alone; when event time moves a
whole window on, every score is scaled by an exact power of two and all are rewritten.

The flow writes the scores with ZADD of absolute values, so replaying a batch after a
crash leaves the same zset. Memory is bounded: beyond ``state_items`` items, the lowest
half is forgotten (items that had no event for many half-lives).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

REBASE_HALF_LIVES = 64


@dataclass(frozen=True, slots=True)
class PopularityUpdate:
    """Scores to ZADD (absolute), and whether the zset must be rebuilt from ``scores``."""

    scores: dict[str, float]
    rebuild: bool


class ItemPopularity:
    """Decayed counts per item; ``add`` returns the changed scores."""

    __slots__ = ("half_life_ms", "state_items", "ref_ms", "scores", "synced")

    def __init__(self, half_life_ms: float, state_items: int) -> None:
        self.half_life_ms = half_life_ms
        self.state_items = state_items
        self.ref_ms: int | None = None
        self.scores: dict[str, float] = {}
        # The Redis marker under which the zset was last rebuilt from ``scores``
        # (flows/redis_resync.py); None before the first time.
        self.synced: str | None = None

    def add(self, events: list[tuple[str, int, float]]) -> PopularityUpdate:
        """Add ``(item_id, ts_ms, weight)`` events; return the new scores of touched items."""
        if not events:
            return PopularityUpdate({}, False)
        window_ms = self.half_life_ms * REBASE_HALF_LIVES
        newest = max(ts for _, ts, _ in events)
        window_ref = int(newest // window_ms * window_ms)
        rebuild = False
        if self.ref_ms is None:
            self.ref_ms = window_ref
        elif window_ref > self.ref_ms:
            self._rebase(window_ref)
            rebuild = True
        ref = self.ref_ms
        half_life = self.half_life_ms
        scores = self.scores
        touched: dict[str, float] = {}
        for item_id, ts, weight in events:
            score = scores.get(item_id, 0.0) + weight * 2.0 ** ((ts - ref) / half_life)
            scores[item_id] = score
            touched[item_id] = score
        if len(scores) > self.state_items:
            self._forget_lowest()
            rebuild = True
        if rebuild:
            return PopularityUpdate(dict(scores), True)
        return PopularityUpdate(touched, False)

    def full_update(self) -> PopularityUpdate:
        """Every score, as a rebuild of the zset (a re-sync)."""
        return PopularityUpdate(dict(self.scores), True)

    def snapshot(self) -> bytes:
        """An immutable copy of the state, for Bytewax recovery."""
        return orjson.dumps([self.ref_ms, self.scores, self.synced])

    @classmethod
    def restore(
        cls, half_life_ms: float, state_items: int, snapshot: bytes | None
    ) -> ItemPopularity:
        """A popularity from a ``snapshot`` (or empty when None)."""
        popularity = cls(half_life_ms, state_items)
        if snapshot is not None:
            # [ref, scores] in snapshots made before re-syncs, [ref, scores, synced] since
            popularity.ref_ms, popularity.scores, *synced = orjson.loads(snapshot)
            popularity.synced = synced[0] if synced else None
        return popularity

    def _rebase(self, new_ref: int) -> None:
        halvings = round((new_ref - self.ref_ms) / self.half_life_ms)
        factor = math.ldexp(1.0, -halvings)
        self.scores = {item: score * factor for item, score in self.scores.items()}
        self.ref_ms = new_ref

    def _forget_lowest(self) -> None:
        keep = sorted(self.scores.items(), key=lambda pair: (-pair[1], pair[0]))
        self.scores = dict(keep[: self.state_items // 2])
