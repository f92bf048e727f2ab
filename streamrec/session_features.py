"""The session-feature contract: the fields of the Redis hash the flow writes and serving reads.

One hash per session at ``RedisKeys.session(sid)``, so serving reads everything with one
HGETALL. Every write sets every field to its absolute value (never an increment), which
makes a replay after a crash idempotent. The key expires ``FlowSettings.session_ttl_s``
after the session's last write.

| field | type | meaning |
|---|---|---|
| ``items`` | JSON list of str | last N clicked item ids, oldest first, in event-time order |
| ``clicks`` | int | clicks seen (duplicates excluded, late clicks included) |
| ``purchases`` | int | purchases seen (duplicates excluded) |
| ``bought`` | JSON list of str | distinct bought item ids, in purchase order (last N) |
| ``categories`` | JSON object str -> int | click count per category |
| ``first_ts`` | int, epoch ms | earliest event time of the session |
| ``last_ts`` | int, epoch ms | latest event time of the session |
| ``gap_ms`` | int, ms | time between the two latest events in event time (0 for one event) |
| ``late`` | int | events that arrived beyond the lateness bound (kept out of ``items``) |
| ``events`` | JSON list of [str, int] | per entry of ``items``: its click's event id and time |

``events`` is what an explanation names ("because of these clicks"); serving reads it only
for a request that asks for one (``decode_session_features(..., with_events=True)``), so
the ordinary answer does not pay for parsing it. Hashes written before the field existed,
or by a flow with ``STREAMREC_FLOW_CLICK_EVENTS=false`` (``[]``), decode with no events.
Event ids of clicks applied from a state saved before the field existed are empty strings.

All fields are pure functions of the session's events, so two runs over the same events
write byte-identical hashes (no wall-clock field on purpose).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import orjson

FIELDS = (
    "items",
    "clicks",
    "purchases",
    "bought",
    "categories",
    "first_ts",
    "last_ts",
    "gap_ms",
    "late",
    "events",
)

SessionEvent = tuple[str, int]  # (event id, event time in ms) of one click of ``items``


@dataclass(frozen=True, slots=True)
class SessionFeatures:
    """A session's features as serving sees them."""

    items: tuple[str, ...]
    clicks: int
    purchases: int
    bought: tuple[str, ...]
    categories: dict[str, int]
    first_ts: int
    last_ts: int
    gap_ms: int
    late: int = 0
    events: tuple[SessionEvent, ...] = ()  # aligned with ``items``; empty unless asked for


def encode_session_features(features: SessionFeatures) -> dict[str, bytes]:
    """The hash fields for ``features``, in ``FIELDS`` order (values as HSET stores them)."""
    values = encode_session_values(
        features.items,
        features.clicks,
        features.purchases,
        features.bought,
        features.categories,
        features.first_ts,
        features.last_ts,
        features.gap_ms,
        features.late,
        features.events,
    )
    return dict(zip(FIELDS, values, strict=True))


def encode_session_values(
    items: Sequence[str],
    clicks: int,
    purchases: int,
    bought: Sequence[str],
    categories: dict[str, int],
    first_ts: int,
    last_ts: int,
    gap_ms: int,
    late: int,
    events: Sequence[SessionEvent],
) -> list[bytes]:
    """The hash values in ``FIELDS`` order, from the feature values themselves.

    The flow writes every changed session of a batch this way (no ``SessionFeatures`` built
    per session); ``encode_session_features`` goes through here too, so both are the same bytes.
    """
    return [
        orjson.dumps(items),
        str(clicks).encode(),
        str(purchases).encode(),
        orjson.dumps(bought),
        orjson.dumps(categories, option=orjson.OPT_SORT_KEYS),
        str(first_ts).encode(),
        str(last_ts).encode(),
        str(gap_ms).encode(),
        str(late).encode(),
        orjson.dumps(events),
    ]


def decode_session_features(
    hash: dict[bytes, bytes],  # noqa: A002
    *,
    with_events: bool = False,
) -> SessionFeatures:
    """Decode an HGETALL reply; raises ``ValueError`` on a hash the flow did not write.

    An empty reply (unknown or expired session) raises too: callers check for it first.
    ``events`` is decoded only ``with_events`` (and is empty for a hash written before it).
    """
    try:
        features = SessionFeatures(
            items=_ids(hash[b"items"]),
            clicks=int(hash[b"clicks"]),
            purchases=int(hash[b"purchases"]),
            bought=_ids(hash[b"bought"]),
            categories={str(k): int(v) for k, v in orjson.loads(hash[b"categories"]).items()},
            first_ts=int(hash[b"first_ts"]),
            last_ts=int(hash[b"last_ts"]),
            gap_ms=int(hash[b"gap_ms"]),
            late=int(hash.get(b"late", b"0")),
        )
        if not with_events or b"events" not in hash:
            return features
        events = _events(hash[b"events"])
        if events and len(events) != len(features.items):
            raise ValueError(f"{len(events)} events for {len(features.items)} items")
    except (KeyError, TypeError, ValueError, AttributeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not a session-feature hash: {exc!r}") from exc
    return replace(features, events=events)


def _ids(field: bytes) -> tuple[str, ...]:
    """A JSON list of item ids; anything else (a list of lists, a string) is refused."""
    ids = orjson.loads(field)
    if not isinstance(ids, list) or not all(isinstance(item_id, str) for item_id in ids):
        raise TypeError("expected a JSON list of strings")
    return tuple(ids)


def _events(field: bytes) -> tuple[SessionEvent, ...]:
    """A JSON list of [event id, event time] pairs; anything else is refused."""
    pairs = orjson.loads(field)
    if not isinstance(pairs, list):
        raise TypeError("expected a JSON list of [event id, ts] pairs")
    events = []
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise TypeError("expected a JSON list of [event id, ts] pairs")
        events.append((pair[0], int(pair[1])))
    return tuple(events)
