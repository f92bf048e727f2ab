"""The event contract: valid events round-trip, each kind of bad input has its own reason."""

from __future__ import annotations

import json
import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec import events
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


# The common case (a well-formed click or purchase) is decoded by a C schema; anything it
# refuses goes the full way (orjson + the checks), which gives the reason. Both must agree
# on every payload: the same Event, or the same Rejection with the same detail.
WIDE = EventLimits(max_bytes=1 << 20)  # nothing oversized: the size check comes first anyway
MAX_TS = NOW_MS + WIDE.max_future_ms
PURCHASE = CLICK | {"type": "purchase", "price": 12.5, "quantity": 2, "user_id": "u1"}
edge_values = (
    st.none()
    | st.booleans()
    | st.integers()  # any size: beyond 64 bits, orjson reads a float
    | st.integers(WIDE.min_ts_ms - 2, WIDE.min_ts_ms + 2)
    | st.integers(MAX_TS - 2, MAX_TS + 2)
    | st.floats()  # NaN and infinities as NaN and Infinity, which no JSON parser reads
    | st.floats(0, 2e12).map(lambda price: float(int(price)))  # whole floats: 5.0 as a count
    | st.text(max_size=4)
    | st.text(min_size=127, max_size=129)  # around MAX_ID_CHARS, in characters not bytes
    | st.text(alphabet="é😀\x00\n\u2028\ufeff", min_size=1, max_size=130)
    | st.sampled_from(["click", "purchase", "impression", "Click", "", "2014-04-01T03:00:00Z"])
    | st.sampled_from([str(NOW_MS), f"{NOW_MS}.0", "2014-04-01 03:00:00+02:00", "nan"])
    | st.lists(st.text(max_size=3), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)


def to_json(value: object) -> bytes:
    """JSON of ``value`` with what orjson refuses to write: ints beyond 64 bits, NaN."""
    return json.dumps(value, ensure_ascii=False).encode()


field_names = st.sampled_from(
    [*PURCHASE, "request_id", "items", "model_version", "arm", "explored", "extra"]
)


def same_result(raw: bytes | str) -> None:
    """The full parse (fast path first) and the full path alone give identical results."""
    fast = events._parse(raw, WIDE, MAX_TS)
    full = events._parse_json(raw, WIDE, MAX_TS)
    assert repr(fast) == repr(full)  # repr: 5 and 5.0, 0.0 and -0.0, True and 1 differ
    assert type(fast) is type(full)


@settings(max_examples=3000, deadline=None)
@given(
    st.sampled_from([CLICK, PURCHASE]),
    st.dictionaries(field_names, edge_values, max_size=3),
    st.sets(field_names, max_size=2),
)
def test_the_fast_path_and_the_full_path_agree_on_events_near_the_common_case(
    base: dict, changes: dict, dropped: set
) -> None:
    obj = {name: value for name, value in (base | changes).items() if name not in dropped}
    same_result(to_json(obj))
    same_result(to_json(obj).decode())


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from([CLICK, PURCHASE]),
    field_names,
    edge_values,
    st.sampled_from([b"", b" ", b"\n\t", b" x", b"\x00"]),
)
def test_the_fast_path_and_the_full_path_agree_on_repeated_fields_and_odd_framing(
    base: dict, name: str, value: object, trailer: bytes
) -> None:
    raw = to_json(base)
    repeated = raw[:-1] + b"," + to_json(name) + b":" + to_json(value) + b"}"
    same_result(repeated)  # JSON with a key twice: the last one counts, in both
    same_result(raw + trailer)
    same_result(b"\xef\xbb\xbf" + raw)  # a byte-order mark


@pytest.mark.parametrize(
    "raw",
    [
        to_json(CLICK | {"ts": 99999999999999999999999}),  # orjson reads a float
        to_json(CLICK | {"ts": float(NOW_MS)}),
        to_json(CLICK | {"ts": "2014-04-01T03:00:00.123Z"}),
        to_json(CLICK | {"item_id": 214536502}),
        to_json(CLICK | {"item_id": 2.5e8}),
        to_json(PURCHASE | {"quantity": 2.0}),
        to_json(PURCHASE | {"price": 3}),
        to_json(PURCHASE | {"price": -0.0}),
        to_json(PURCHASE | {"price": 1e12}),
        to_json(CLICK | {"user_id": "😀" * 128}),
        to_json(CLICK | {"user_id": "😀" * 129}),
        to_json(CLICK | {"category": ""}),
        to_json(CLICK | {"event_id": ""}),
        to_json(CLICK | {"extra": [[[]]]}),
        to_json(CLICK | {"items": ["a"]}),
        to_json(CLICK)[:-1] + b',"extra":1e400}',
        to_json(CLICK)[:-1] + b',"category":"\\ud800"}',  # a lone surrogate, escaped
        to_json(CLICK).replace(b'"s1"', b'"s\xff"'),  # not UTF-8
        to_json(CLICK).decode().replace('"s1"', '"s\ud800"'),  # a str with a surrogate
        b"[" * 1100 + b"]" * 1100,
        to_json(CLICK)[:-1] + b',"extra":' + b"[" * 1100 + b"]" * 1100 + b"}",
    ],
)
def test_the_fast_path_and_the_full_path_agree_on_edge_cases(raw: bytes | str) -> None:
    same_result(raw)


def test_well_formed_clicks_and_purchases_take_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def full_path(*args: object) -> Rejection:
        raise AssertionError("took the full path")

    monkeypatch.setattr(events, "_parse_json", full_path)
    common = [
        CLICK,
        CLICK | {"category": None, "user_id": "u" * 128, "request_id": "r1"},
        PURCHASE,
        PURCHASE | {"price": 3, "quantity": 0, "session_id": "é😀" * 64},
    ]
    parsed = parse_events([orjson.dumps(obj) for obj in common], WIDE)
    assert [event.type for event in parsed] == ["click", "click", "purchase", "purchase"]
    assert parsed[3].price == 3.0 and type(parsed[3].price) is float
