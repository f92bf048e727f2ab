"""Dead-letter records keep the original bytes exactly, with reason and position."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.dead_letter import DeadLetter, decode_dead_letter, encode_dead_letter
from streamrec.events import RejectReason


@given(raw=st.binary(max_size=3000), reason=st.sampled_from(list(RejectReason)))
def test_any_bytes_round_trip(raw: bytes, reason: RejectReason) -> None:
    letter = DeadLetter(raw, reason, "detail", "clicks", 2, 77, b"k")
    assert decode_dead_letter(encode_dead_letter(letter), b"k") == letter


def test_record_is_readable_json_with_a_text_preview() -> None:
    letter = DeadLetter(b'{"type": "click"', RejectReason.MALFORMED_JSON, "eof", "clicks", 0, 5)
    data = orjson.loads(encode_dead_letter(letter))
    assert data["reason"] == "malformed_json"
    assert data["raw_text"] == '{"type": "click"'
    assert (data["topic"], data["partition"], data["offset"]) == ("clicks", 0, 5)


@pytest.mark.parametrize("payload", [b"", b"[]", b'{"reason": "nope"}'])
def test_other_bytes_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode_dead_letter(payload)
