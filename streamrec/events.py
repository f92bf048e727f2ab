"""The event contract: the only definition of what travels on the bus.

Three event types share one flat JSON object shape:

- ``click``: a shopper looked at ``item_id`` (maybe after an impression ``request_id``);
- ``purchase``: a shopper bought ``item_id`` (``price`` and ``quantity``, 0 when unknown);
- ``impression``: serving showed ``items`` in answer to ``request_id``.

``ts`` is the event time in epoch milliseconds (an ISO-8601 string is accepted too).
``event_id`` is stable across retries and replays, so consumers deduplicate on it.

``parse_event`` never raises on input: it returns an ``Event`` or a ``Rejection`` whose
``reason`` comes from the closed set ``RejectReason``; that reason travels to the dead-letter
topic and to a counter.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from streamrec.settings import EventSettings

EVENT_TYPES = ("click", "purchase", "impression")
MAX_ID_CHARS = 128
MAX_IMPRESSION_ITEMS = 1000


class RejectReason(enum.StrEnum):
    """Why an event was refused; one value per kind of bad input."""

    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"
    OVERSIZED = "oversized"
    TS_OUT_OF_RANGE = "ts_out_of_range"
    UNKNOWN_TYPE = "unknown_type"


@dataclass(frozen=True, slots=True)
class Event:
    """One valid event. ``items`` is only non-empty for impressions."""

    event_id: str
    type: str
    session_id: str
    ts: int
    item_id: str = ""
    user_id: str | None = None
    category: str | None = None
    price: float = 0.0
    quantity: int = 0
    request_id: str | None = None
    items: tuple[str, ...] = ()
    model_version: int | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused payload: the reason from the closed set plus a human-readable detail."""

    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class EventLimits:
    """The limits ``parse_event`` enforces, resolved once from ``EventSettings``."""

    max_bytes: int = 4096
    min_ts_ms: int = 946684800000
    max_future_ms: int = 86_400_000

    @classmethod
    def from_settings(cls, settings: EventSettings) -> EventLimits:
        return cls(settings.max_bytes, settings.min_ts_ms, int(settings.max_future_s * 1000))


_STR_FIELDS_OPTIONAL = ("user_id", "category", "request_id")


def parse_event(raw: bytes | str, limits: EventLimits = EventLimits()) -> Event | Rejection:
    """Parse and validate one payload; never raises."""
    if len(raw) > limits.max_bytes:
        return Rejection(RejectReason.OVERSIZED, f"{len(raw)} bytes > limit {limits.max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection(RejectReason.MALFORMED_JSON, str(exc)[:200])
    if not isinstance(obj, dict):
        return Rejection(RejectReason.NOT_AN_OBJECT, f"top level is {type(obj).__name__}")
    return validate_event(obj, limits)


def validate_event(obj: dict[str, Any], limits: EventLimits = EventLimits()) -> Event | Rejection:
    """Validate an already-decoded JSON object against the contract; never raises."""
    kind = obj.get("type")
    if kind is None:
        return Rejection(RejectReason.MISSING_FIELD, "type")
    if kind not in EVENT_TYPES:
        return Rejection(RejectReason.UNKNOWN_TYPE, repr(kind)[:80])
    required = (
        ("event_id", "session_id", "ts", "items")
        if kind == "impression"
        else ("event_id", "session_id", "ts", "item_id")
    )
    for name in required:
        if obj.get(name) is None:
            return Rejection(RejectReason.MISSING_FIELD, name)
    event_id = obj["event_id"]
    session_id = obj["session_id"]
    for name, value in (("event_id", event_id), ("session_id", session_id)):
        problem = _id_problem(name, value)
        if problem:
            return problem
    ts = _parse_ts(obj["ts"])
    if isinstance(ts, Rejection):
        return ts
    now_ms = int(time.time() * 1000)
    if ts < limits.min_ts_ms or ts > now_ms + limits.max_future_ms:
        return Rejection(RejectReason.TS_OUT_OF_RANGE, f"ts={ts}")
    optional: dict[str, str | None] = {}
    for name in _STR_FIELDS_OPTIONAL:
        value = obj.get(name)
        if value is not None:
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            elif not isinstance(value, str):
                return Rejection(RejectReason.WRONG_TYPE, f"{name} must be a string")
            if len(value) > MAX_ID_CHARS:
                return Rejection(RejectReason.INVALID_VALUE, f"{name} longer than {MAX_ID_CHARS}")
        optional[name] = value
    price = obj.get("price", 0.0)
    if isinstance(price, bool) or not isinstance(price, int | float):
        return Rejection(RejectReason.WRONG_TYPE, "price must be a number")
    if not 0 <= price < 1e12:
        return Rejection(RejectReason.INVALID_VALUE, "price out of range")
    quantity = obj.get("quantity", 0)
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        return Rejection(RejectReason.WRONG_TYPE, "quantity must be an integer")
    if not 0 <= quantity < 1_000_000:
        return Rejection(RejectReason.INVALID_VALUE, "quantity out of range")
    item_id = ""
    items: tuple[str, ...] = ()
    model_version = None
    if kind == "impression":
        raw_items = obj["items"]
        if not isinstance(raw_items, list) or not all(isinstance(i, str) for i in raw_items):
            return Rejection(RejectReason.WRONG_TYPE, "items must be a list of strings")
        if not 0 < len(raw_items) <= MAX_IMPRESSION_ITEMS:
            return Rejection(RejectReason.INVALID_VALUE, "items must hold 1..1000 ids")
        items = tuple(raw_items)
        if optional["request_id"] is None:
            return Rejection(RejectReason.MISSING_FIELD, "request_id")
        model_version = obj.get("model_version")
        if model_version is not None and (
            isinstance(model_version, bool) or not isinstance(model_version, int)
        ):
            return Rejection(RejectReason.WRONG_TYPE, "model_version must be an integer")
    else:
        item_id = obj["item_id"]
        if isinstance(item_id, int) and not isinstance(item_id, bool):
            item_id = str(item_id)
        problem = _id_problem("item_id", item_id)
        if problem:
            return problem
    return Event(
        event_id=event_id,
        type=kind,
        session_id=session_id,
        ts=ts,
        item_id=item_id,
        user_id=optional["user_id"],
        category=optional["category"],
        price=float(price),
        quantity=quantity,
        request_id=optional["request_id"],
        items=items,
        model_version=model_version,
    )


def _id_problem(name: str, value: Any) -> Rejection | None:
    if not isinstance(value, str):
        return Rejection(RejectReason.WRONG_TYPE, f"{name} must be a string")
    if not value or len(value) > MAX_ID_CHARS:
        return Rejection(RejectReason.INVALID_VALUE, f"{name} must be 1..{MAX_ID_CHARS} chars")
    return None


def _parse_ts(value: Any) -> int | Rejection:
    if isinstance(value, bool):
        return Rejection(RejectReason.WRONG_TYPE, "ts must be epoch ms or ISO-8601")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return Rejection(RejectReason.INVALID_VALUE, "ts is not finite")
        return int(value)
    if isinstance(value, str):
        try:
            return iso_to_ms(value)
        except ValueError:
            return Rejection(RejectReason.INVALID_VALUE, f"unparseable ts {value[:40]!r}")
    return Rejection(RejectReason.WRONG_TYPE, "ts must be epoch ms or ISO-8601")


def iso_to_ms(value: str) -> int:
    """ISO-8601 (``Z`` or offset; naive means UTC) to epoch milliseconds."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def event_to_dict(event: Event) -> dict[str, Any]:
    """The JSON object for an event, omitting empty optional fields."""
    data: dict[str, Any] = {
        "event_id": event.event_id,
        "type": event.type,
        "session_id": event.session_id,
        "ts": event.ts,
    }
    if event.type == "impression":
        data["items"] = list(event.items)
        if event.model_version is not None:
            data["model_version"] = event.model_version
    else:
        data["item_id"] = event.item_id
    for name in _STR_FIELDS_OPTIONAL:
        value = getattr(event, name)
        if value is not None:
            data[name] = value
    if event.price:
        data["price"] = event.price
    if event.quantity:
        data["quantity"] = event.quantity
    return data


def encode_event(event: Event) -> bytes:
    """Serialize an event to the bytes that go on the bus."""
    return orjson.dumps(event_to_dict(event))
