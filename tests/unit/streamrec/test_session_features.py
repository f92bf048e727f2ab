"""The session hash contract: what the flow writes decodes back to the same features."""

from __future__ import annotations

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
)


def as_reply(fields: dict[str, bytes]) -> dict[bytes, bytes]:
    """What HGETALL returns for the fields HSET stored."""
    return {name.encode(): value for name, value in fields.items()}


@given(features)
def test_encode_then_decode_gives_back_the_features(value: SessionFeatures) -> None:
    assert decode_session_features(as_reply(encode_session_features(value))) == value


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
    ],
)
def test_a_hash_the_flow_did_not_write_is_refused(reply: dict[bytes, bytes]) -> None:
    with pytest.raises(ValueError):
        decode_session_features(reply)
