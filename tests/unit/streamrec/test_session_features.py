"""The session hash contract: what the flow writes decodes back to the same features."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamrec.session_features import (
    FIELDS,
    SessionFeatures,
    decode_session_features,
    encode_session_features,
)

ids = st.text(min_size=1, max_size=20)
features = st.builds(
    SessionFeatures,
    items=st.lists(ids, max_size=50).map(tuple),
    clicks=st.integers(0, 10**6),
    purchases=st.integers(0, 10**6),
    bought=st.lists(ids, max_size=50).map(tuple),
    categories=st.dictionaries(ids, st.integers(1, 10**6), max_size=12),
    first_ts=st.integers(0, 2**42),
    last_ts=st.integers(0, 2**42),
    gap_ms=st.integers(0, 2**40),
    late=st.integers(0, 10**6),
).flatmap(
    lambda value: st.lists(
        st.tuples(ids, st.integers(0, 2**42)), min_size=len(value.items), max_size=len(value.items)
    ).map(lambda events: replace(value, events=tuple(events)))
)


def as_reply(fields: dict[str, bytes]) -> dict[bytes, bytes]:
    """What HGETALL returns for the fields HSET stored."""
    return {name.encode(): value for name, value in fields.items()}


@given(features)
def test_encode_then_decode_gives_back_the_features(value: SessionFeatures) -> None:
    reply = as_reply(encode_session_features(value))
    assert decode_session_features(reply, with_events=True) == value
    assert decode_session_features(reply) == replace(value, events=())  # serving's usual read


def test_a_hash_without_events_decodes_with_no_events() -> None:
    value = SessionFeatures(("a", "b"), 2, 0, (), {}, 5, 6, 1, 0, (("e1", 5), ("e2", 6)))
    reply = as_reply(encode_session_features(value))
    not_kept = reply | {b"events": b"[]"}  # STREAMREC_FLOW_CLICK_EVENTS=false
    assert decode_session_features(not_kept, with_events=True) == replace(value, events=())
    del reply[b"events"]  # written before the field existed
    assert decode_session_features(reply, with_events=True) == replace(value, events=())


def test_fields_are_encoded_in_the_documented_order() -> None:
    encoded = encode_session_features(SessionFeatures(("a",), 1, 0, (), {"3": 1}, 5, 5, 0))
    assert tuple(encoded) == FIELDS  # the publisher's Lua script relies on this order


@pytest.mark.parametrize(
    "reply",
    [
        {},
        {b"items": b"not json"},
        {name.encode(): b"x" for name in FIELDS},
        # Valid JSON of the wrong shape: ids must be strings (serving looks them up).
        as_reply(encode_session_features(SessionFeatures(("a",), 1, 0, (), {}, 5, 5, 0)))
        | {b"items": b'[["a"], ["b"]]'},
        as_reply(encode_session_features(SessionFeatures(("a",), 1, 0, (), {}, 5, 5, 0)))
        | {b"bought": b'"ab"'},
        # events must be [id, ts] pairs, one per item
        as_reply(encode_session_features(SessionFeatures(("a",), 1, 0, (), {}, 5, 5, 0)))
        | {b"events": b'[["e1", 5], ["e2", 6]]'},
        as_reply(encode_session_features(SessionFeatures(("a",), 1, 0, (), {}, 5, 5, 0)))
        | {b"events": b'[["e1"]]'},
    ],
)
def test_a_hash_the_flow_did_not_write_is_refused(reply: dict[bytes, bytes]) -> None:
    with pytest.raises(ValueError):
        decode_session_features(reply, with_events=True)
