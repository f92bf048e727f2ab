"""Where each acknowledged event of a fault drill went: in Redis, ended, lost, or unexplained.

``streamrec chaos`` compares the click and purchase counts of every session's hash in Redis
with the events the broker acknowledged. Not every shortfall is a fault of the loop:

- **ended**: a session idle for longer than the session TTL (event time) ends; the flow
  forgets it, and a later event starts a new session under the same id, whose hash
  replaces the old one. A replay runs event time much faster than the wall clock, so Redis
  (whose keys expire on the wall clock) still holds ended sessions; after a Redis loss the
  flow cannot write them again, since it no longer has them. A live system's Redis would
  have expired them by then anyway. The flow evicts lazily (at its sweeps), so an ended
  session may still be counted in full: ended events explain a shortfall, they are not
  required to be missing.
- **lost with the broker**: a memory-only broker that restarts loses what the flow had not
  read yet: events acknowledged within ``window`` events before the restart. The flow
  raises ``topic_reset`` for it.
- **unexplained**: the rest. A drill passes only with none.

Plain functions over the acknowledged events (in replay order) and the counts read back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from streamrec.events import Event


@dataclass(frozen=True, slots=True)
class Faults:
    """When the data-losing faults struck, as the number of events acknowledged before each;
    ``broker_window``: events before a broker restart the flow may not have read yet."""

    redis_losses: tuple[int, ...] = ()
    broker_restarts: tuple[int, ...] = ()
    broker_window: int = 0


@dataclass(frozen=True, slots=True)
class Accounting:
    acknowledged: int
    in_redis: int
    missing: int
    counted_twice: int
    ended: int  # missing events explained by sessions that ended (idle past the TTL)
    lost_with_broker: int  # missing events explained by a broker restart
    unexplained: int

    def as_dict(self) -> dict[str, int]:
        return {
            "events_acknowledged": self.acknowledged,
            "events_in_redis": self.in_redis,
            "events_missing": self.missing,
            "events_missing_ended_sessions": self.ended,
            "events_missing_lost_with_broker": self.lost_with_broker,
            "events_missing_unexplained": self.unexplained,
            "events_counted_twice": self.counted_twice,
        }


def account_events(
    acked: Sequence[Event], counted: Mapping[str, int], ttl_ms: int, faults: Faults
) -> Accounting:
    """Account for every event of ``acked`` against ``counted`` (session id -> clicks +
    purchases in Redis); see the module docstring."""
    positions: dict[str, list[int]] = defaultdict(list)
    for index, event in enumerate(acked):
        positions[event.session_id].append(index)
    newest_before = _newest_ts_before(acked, faults.redis_losses)
    in_redis = missing = doubled = ended = lost = unexplained = 0
    for session, indices in positions.items():
        expected, have = len(indices), counted.get(session, 0)
        in_redis += min(expected, have)
        doubled += max(0, have - expected)
        short = max(0, expected - have)
        if not short:
            continue
        missing += short
        session_ended = _ended_events(acked, indices, ttl_ms, faults.redis_losses, newest_before)
        session_lost = sum(
            1
            for restart in faults.broker_restarts
            for index in indices
            if restart - faults.broker_window <= index < restart
        )
        explained_ended = min(short, session_ended)
        explained_lost = min(short - explained_ended, session_lost)
        ended += explained_ended
        lost += explained_lost
        unexplained += short - explained_ended - explained_lost
    return Accounting(len(acked), in_redis, missing, doubled, ended, lost, unexplained)


def _newest_ts_before(acked: Sequence[Event], points: Sequence[int]) -> dict[int, int]:
    """For each point (an index into ``acked``), the newest event time acknowledged before it."""
    return {point: max((event.ts for event in acked[:point]), default=-1) for point in points}


def _ended_events(
    acked: Sequence[Event],
    indices: list[int],
    ttl_ms: int,
    redis_losses: Sequence[int],
    newest_before: Mapping[int, int],
) -> int:
    """How many of a session's events precede the last point where it may have ended: an
    idle gap longer than the TTL between two of its events, or a Redis loss while it had been
    idle longer than the TTL."""
    ended_at = 0  # events before the last end point
    for before, (previous, current) in enumerate(zip(indices, indices[1:], strict=False), 1):
        if acked[current].ts - acked[previous].ts > ttl_ms:
            ended_at = before
    for loss in redis_losses:
        earlier = [index for index in indices if index < loss]
        if earlier and newest_before[loss] - max(acked[i].ts for i in earlier) > ttl_ms:
            ended_at = max(ended_at, len(earlier))
    return ended_at
