"""The event contract: valid events round-trip, each kind of bad input has its own reason."""

from __future__ import annotations

import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.events import (
    Event,
    EventLimits,
    Rejection,
    RejectReason,
    encode_event,
    parse_event,
    parse_events,
)

NOW_MS = int(time.time() * 1000)
CLICK = {
    "event_id": "e1",
    "type": "click",
    "session_id": "s1",
    "ts": NOW_MS,
    "item_id": "i1",
    "category": "3",
}


def payload(**changes: object) -> bytes:
    data = dict(CLICK)
    for key, value in changes.items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    return orjson.dumps(data)


def test_click_parses_to_typed_event() -> None:
    event = parse_event(payload())
    assert isinstance(event, Event)
    assert (event.type, event.session_id, event.item_id, event.ts) == ("click", "s1", "i1", NOW_MS)
    assert event.category == "3"


def test_encode_then_parse_round_trips_every_type() -> None:
    events = [
        Event("a", "click", "s", NOW_MS, item_id="i", request_id="r1"),
        Event("b", "purchase", "s", NOW_MS, item_id="i", price=9.5, quantity=2, user_id="u"),
        Event("c", "impression", "s", NOW_MS, request_id="r1", items=("i", "j"), model_version=3),
        Event(
            "d", "impression", "s", NOW_MS, request_id="r2", items=("i",), arm="a", explored=(0,)
        ),
    ]
    for event in events:
        assert parse_event(encode_event(event)) == event


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"arm": 7}, RejectReason.WRONG_TYPE),
        ({"arm": ""}, RejectReason.INVALID_VALUE),
        ({"explored": [0.5]}, RejectReason.WRONG_TYPE),
        ({"explored": [2]}, RejectReason.INVALID_VALUE),
    ],
)
def test_an_impression_arm_or_explored_slot_that_is_not_one_is_refused(
    changes: dict[str, object], reason: RejectReason
) -> None:
    impression = {"type": "impression", "request_id": "r", "items": ["i", "j"]}
    rejection = parse_event(payload(item_id=..., category=..., **impression, **changes))
    assert isinstance(rejection, Rejection) and rejection.reason == reason


def test_iso_timestamp_is_accepted_as_utc() -> None:
    event = parse_event(payload(ts="2014-04-01T03:00:00.123Z"))
    assert isinstance(event, Event)
    assert event.ts == 1396321200123


def test_numeric_ids_are_normalised_to_strings() -> None:
    event = parse_event(payload(item_id=214536502))
    assert isinstance(event, Event) and event.item_id == "214536502"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"event_id": "e1", "type": ', RejectReason.MALFORMED_JSON),
        (b"\xff\xfe not json", RejectReason.MALFORMED_JSON),
        (b"[1, 2]", RejectReason.NOT_AN_OBJECT),
        (payload(item_id=...), RejectReason.MISSING_FIELD),
        (payload(event_id=...), RejectReason.MISSING_FIELD),
        (payload(type=...), RejectReason.MISSING_FIELD),
        (payload(item_id=1.5), RejectReason.WRONG_TYPE),
        (payload(session_id=["s"]), RejectReason.WRONG_TYPE),
        (payload(price="cheap"), RejectReason.WRONG_TYPE),
        (payload(quantity=True), RejectReason.WRONG_TYPE),
        (payload(ts={"at": 1}), RejectReason.WRONG_TYPE),
        (payload(session_id=""), RejectReason.INVALID_VALUE),
        (payload(price=-1), RejectReason.INVALID_VALUE),
        (payload(ts="yesterday"), RejectReason.INVALID_VALUE),
        (payload(category="x" * 5000), RejectReason.OVERSIZED),
        (payload(ts=1000), RejectReason.TS_OUT_OF_RANGE),
        (payload(ts=NOW_MS + 10 * 86_400_000), RejectReason.TS_OUT_OF_RANGE),
        (payload(type="hover"), RejectReason.UNKNOWN_TYPE),
        (
            orjson.dumps(
                {
                    "event_id": "e",
                    "type": "impression",
                    "session_id": "s",
                    "ts": NOW_MS,
                    "items": ["a"],
                }
            ),
            RejectReason.MISSING_FIELD,
        ),
    ],
)
def test_each_bad_input_gets_its_own_reason(raw: bytes, reason: RejectReason) -> None:
    result = parse_event(raw)
    assert isinstance(result, Rejection)
    assert result.reason is reason
    assert result.detail


def test_a_batch_parses_as_each_payload_alone_in_order() -> None:
    batch = [payload(), payload(item_id=...), payload(event_id="e2", ts=NOW_MS - 5), b"[1]"]
    assert parse_events(batch) == [parse_event(raw) for raw in batch]
    assert [type(result) for result in parse_events(batch)] == [Event, Rejection, Event, Rejection]


def test_size_limit_is_configurable() -> None:
    small = EventLimits(max_bytes=64)
    assert isinstance(parse_event(payload(), small), Rejection)
    assert isinstance(parse_event(payload(), EventLimits(max_bytes=1000)), Event)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_parser_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    assert isinstance(parse_event(raw), Event | Rejection)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=500, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={k: json_values for k in CLICK}
        | {
            "items": json_values,
            "price": json_values,
            "quantity": json_values,
            "model_version": json_values,
        },
    )
)
def test_parser_never_raises_on_arbitrary_json_objects(obj: dict) -> None:
    assert isinstance(parse_event(orjson.dumps(obj)), Event | Rejection)
