"""Dead-letter records keep the original bytes (or a bounded prefix), with reason and position."""

from __future__ import annotations

import hashlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.dead_letter import (
    KEY_MAX_BYTES,
    MAX_RECORD_BYTES,
    RAW_PREFIX_BYTES,
    dead_letter,
    decode_dead_letter,
    encode_dead_letter,
)
from streamrec.events import RejectReason


@given(raw=st.binary(max_size=3000), reason=st.sampled_from(list(RejectReason)))
def test_any_small_payload_round_trips_exactly(raw: bytes, reason: RejectReason) -> None:
    letter = dead_letter(raw, reason, "detail", "clicks", 2, 77, b"k")
    back = decode_dead_letter(encode_dead_letter(letter), b"k")
    assert back == letter
    assert back.raw == raw and not back.truncated
    assert back.sha256 == hashlib.sha256(raw).hexdigest()


def test_record_is_readable_json_with_a_text_preview() -> None:
    letter = dead_letter(b'{"type": "click"', RejectReason.MALFORMED_JSON, "eof", "clicks", 0, 5)
    data = orjson.loads(encode_dead_letter(letter))
    assert data["reason"] == "malformed_json"
    assert data["raw_text"] == '{"type": "click"'
    assert (data["topic"], data["partition"], data["offset"]) == ("clicks", 0, 5)
    assert (data["size"], data["truncated"]) == (16, False)


@pytest.mark.parametrize("size", [750_000, 2_000_000])
def test_an_oversized_payload_keeps_a_prefix_its_size_and_digest(size: int) -> None:
    raw = bytes(range(256)) * (size // 256)
    letter = dead_letter(raw, RejectReason.OVERSIZED, "too big", "clicks", 1, 9, b"s" * 5000)
    encoded = encode_dead_letter(letter)
    back = decode_dead_letter(encoded, letter.key)
    assert back.truncated and back.size == len(raw)
    assert back.raw == raw[:RAW_PREFIX_BYTES]
    assert back.sha256 == hashlib.sha256(raw).hexdigest()
    assert len(letter.key) == KEY_MAX_BYTES
    assert len(encoded) + len(letter.key) <= MAX_RECORD_BYTES


@given(
    size=st.integers(RAW_PREFIX_BYTES - 10, 3 * RAW_PREFIX_BYTES),
    fill=st.binary(min_size=1, max_size=4),
    detail=st.text(max_size=5000),
    key=st.binary(max_size=3000),
)
def test_no_record_exceeds_the_bound(size: int, fill: bytes, detail: str, key: bytes) -> None:
    """Worst cases for the JSON size included: control bytes (six characters each once
    escaped) and invalid UTF-8 in the preview, a long detail, a long key."""
    raw = (fill * size)[:size]
    letter = dead_letter(raw, RejectReason.OVERSIZED, detail, "t" * 249, 2**31 - 1, 2**62, key)
    assert len(encode_dead_letter(letter)) + len(letter.key) <= MAX_RECORD_BYTES


@pytest.mark.parametrize("payload", [b"", b"[]", b'{"reason": "nope"}'])
def test_other_bytes_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode_dead_letter(payload)
