"""One session's live state: dedupe, event-time ordering of clicks, and the feature values.

Guarantees, for the events of one session:

- an ``event_id`` already seen changes nothing (``record`` returns False);
- a click within ``lateness_ms`` of the session's latest click is inserted at its event-time
  place in ``items`` (ties keep arrival order); an older one is counted in ``late``, still
  counted in ``clicks`` and ``categories``, but kept out of ``items`` and gets no example;
- counts, categories, first/last time and the gap are commutative, so they do not depend on
  how the clicks and purchases streams interleave; ``items`` depends only on the click order
  of the session's partition, and ``bought`` only on the purchase order.
"""

from __future__ import annotations

from bisect import bisect_right

import orjson

from streamrec.session_features import SessionFeatures, encode_session_values

NO_TS = -1
_VALUES_BEFORE_EVENTS = 13  # the length of a saved state from before ``item_events``


class SessionState:
    """Mutable features of one session (plain data, saved as JSON in Bytewax snapshots)."""

    __slots__ = (
        "seen",
        "item_ts",
        "item_events",
        "items",
        "clicks",
        "purchases",
        "bought",
        "categories",
        "first_ts",
        "last_ts",
        "prev_ts",
        "last_click_ts",
        "last_purchase_ts",
        "late",
    )

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.item_ts: list[int] = []
        self.item_events: list[str] = []  # the event id of each click of ``items``
        self.items: list[str] = []
        self.clicks = 0
        self.purchases = 0
        self.bought: list[str] = []
        self.categories: dict[str, int] = {}
        self.first_ts = NO_TS
        self.last_ts = NO_TS
        self.prev_ts = NO_TS
        self.last_click_ts = NO_TS
        self.last_purchase_ts = NO_TS
        self.late = 0

    def to_json(self) -> bytes:
        """The state as JSON (one flat array), for Bytewax snapshots; no pickle involved."""
        return orjson.dumps(
            [
                list(self.seen),
                self.item_ts,
                self.items,
                self.clicks,
                self.purchases,
                self.bought,
                self.categories,
                self.first_ts,
                self.last_ts,
                self.prev_ts,
                self.last_click_ts,
                self.last_purchase_ts,
                self.late,
                self.item_events,
            ]
        )

    @classmethod
    def from_json(cls, raw: bytes) -> SessionState:
        """Inverse of ``to_json``; a state saved before ``item_events`` existed gets empty ids."""
        state = cls.__new__(cls)
        values = orjson.loads(raw)
        (
            seen,
            state.item_ts,
            state.items,
            state.clicks,
            state.purchases,
            state.bought,
            state.categories,
            state.first_ts,
            state.last_ts,
            state.prev_ts,
            state.last_click_ts,
            state.last_purchase_ts,
            state.late,
        ) = values[:_VALUES_BEFORE_EVENTS]
        old = len(values) == _VALUES_BEFORE_EVENTS
        state.item_events = [""] * len(state.items) if old else values[_VALUES_BEFORE_EVENTS]
        state.seen = set(seen)
        return state

    def record(self, event_id: str) -> bool:
        """Remember ``event_id``; False when it was seen before (a duplicate)."""
        seen = self.seen
        if event_id in seen:
            return False
        seen.add(event_id)
        return True

    def apply_click(
        self,
        ts: int,
        item_id: str,
        category: str | None,
        history_len: int,
        lateness_ms: int,
        event_id: str,
    ) -> tuple[str, ...] | None:
        """Apply a new click (``event_id`` is kept beside its item, for explanations);
        return the items before it in event time, or None when late."""
        self._touch(ts)
        self.clicks += 1
        if category is not None:
            self.categories[category] = self.categories.get(category, 0) + 1
        last_click = self.last_click_ts
        if last_click != NO_TS and ts < last_click - lateness_ms:
            self.late += 1
            return None
        if ts > last_click:
            self.last_click_ts = ts
        item_ts = self.item_ts
        items = self.items
        item_events = self.item_events
        if not item_ts or ts >= item_ts[-1]:
            history = tuple(items)
            item_ts.append(ts)
            items.append(item_id)
            item_events.append(event_id)
        else:
            place = bisect_right(item_ts, ts)
            history = tuple(items[:place])
            item_ts.insert(place, ts)
            items.insert(place, item_id)
            item_events.insert(place, event_id)
        if len(items) > history_len:
            del item_ts[0]
            del items[0]
            del item_events[0]
        return history

    def apply_purchase(
        self, ts: int, item_id: str, history_len: int, lateness_ms: int
    ) -> tuple[str, ...]:
        """Apply a new purchase; return the clicked items up to its event time."""
        self._touch(ts)
        self.purchases += 1
        last_purchase = self.last_purchase_ts
        if last_purchase != NO_TS and ts < last_purchase - lateness_ms:
            self.late += 1
        elif ts > last_purchase:
            self.last_purchase_ts = ts
        bought = self.bought
        if item_id not in bought:
            bought.append(item_id)
            if len(bought) > history_len:
                del bought[0]
        return self.items_until(ts)

    def items_until(self, ts: int) -> tuple[str, ...]:
        """The clicked items (of the history kept) up to event time ``ts``, in order."""
        item_ts = self.item_ts
        if not item_ts or ts >= item_ts[-1]:
            return tuple(self.items)
        return tuple(self.items[: bisect_right(item_ts, ts)])

    def _touch(self, ts: int) -> None:
        """Track first time and the two latest times (a multiset top-2, order-independent)."""
        if self.first_ts == NO_TS or ts < self.first_ts:
            self.first_ts = ts
        if ts >= self.last_ts:
            self.prev_ts = self.last_ts
            self.last_ts = ts
        elif ts > self.prev_ts:
            self.prev_ts = ts

    def features(self) -> SessionFeatures:
        """The current feature values (what goes to Redis)."""
        return SessionFeatures(
            items=tuple(self.items),
            clicks=self.clicks,
            purchases=self.purchases,
            bought=tuple(self.bought),
            categories=dict(self.categories),
            first_ts=self.first_ts,
            last_ts=self.last_ts,
            gap_ms=self.last_ts - self.prev_ts if self.prev_ts != NO_TS else 0,
            late=self.late,
            events=tuple(zip(self.item_events, self.item_ts, strict=True)),
        )

    def hash_values(self, with_events: bool) -> list[bytes]:
        """The session hash values in ``FIELDS`` order: ``features()`` encoded, without the
        intermediate ``SessionFeatures`` (the flow's per-batch write path); ``events`` is
        empty unless ``with_events``."""
        return encode_session_values(
            self.items,
            self.clicks,
            self.purchases,
            self.bought,
            self.categories,
            self.first_ts,
            self.last_ts,
            self.last_ts - self.prev_ts if self.prev_ts != NO_TS else 0,
            self.late,
            list(zip(self.item_events, self.item_ts, strict=True)) if with_events else (),
        )
