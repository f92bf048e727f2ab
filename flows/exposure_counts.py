"""How often each item was shown in a list, and clicked from one: exploration's evidence.

Serving's exploration slot (Thompson sampling on an item's CTR) reads these counts from
Redis (``RedisKeys.item_shown`` / ``item_clicked``). They are counted from closed exposure
outcomes, so the shown and clicked counts of an item always cover the same impressions.
The counts live in the flow's recovery state and are written as absolute values (HSET),
so a replay after a crash or a re-sync after Redis lost data never counts twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from streamrec.exposure_outcomes import ExposureOutcome


@dataclass(frozen=True, slots=True)
class CountsUpdate:
    """Absolute counts of the items that changed (or of every item, for a re-sync)."""

    shown: dict[str, int]
    clicked: dict[str, int]

    def __bool__(self) -> bool:
        return bool(self.shown or self.clicked)


class ExposureCounts:
    """Times shown and clicked-from-a-list per item; ``add`` returns what changed."""

    __slots__ = ("shown", "clicked", "synced")

    def __init__(self) -> None:
        self.shown: dict[str, int] = {}
        self.clicked: dict[str, int] = {}
        # The Redis marker under which the counts were last written in full
        # (flows/redis_resync.py); None before the first time.
        self.synced: str | None = None

    def add(self, outcomes: Iterable[ExposureOutcome]) -> CountsUpdate:
        """Count the outcomes' shown and clicked items; return their new totals."""
        shown, clicked = self.shown, self.clicked
        touched_shown: dict[str, int] = {}
        touched_clicked: dict[str, int] = {}
        for outcome in outcomes:
            for item in outcome.items:
                touched_shown[item] = shown[item] = shown.get(item, 0) + 1
            for item in outcome.clicked:
                touched_clicked[item] = clicked[item] = clicked.get(item, 0) + 1
        return CountsUpdate(touched_shown, touched_clicked)

    def full_update(self) -> CountsUpdate:
        """Every count (a re-sync)."""
        return CountsUpdate(dict(self.shown), dict(self.clicked))

    def snapshot(self) -> bytes:
        """An immutable copy of the state, for Bytewax recovery."""
        return orjson.dumps([self.shown, self.clicked, self.synced])

    @classmethod
    def restore(cls, snapshot: bytes | None) -> ExposureCounts:
        """Counts from a ``snapshot`` (or empty when None)."""
        counts = cls()
        if snapshot is not None:
            counts.shown, counts.clicked, counts.synced = orjson.loads(snapshot)
        return counts
