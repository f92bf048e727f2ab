"""The dead-letter record: what the flow writes to ``events-dlq`` for every refused message.

One JSON object per refused message, with the original message's key as its key::

    {"reason": "malformed_json", "detail": "...", "topic": "clicks", "partition": 3,
     "offset": 1234, "size": 31, "sha256": "9f2c...", "truncated": false,
     "raw_b64": "eyJldmVudF9pZCI6...", "raw_text": "{\\"event_id\\":..."}

``raw_b64`` holds the original bytes exactly, or only their first ``RAW_PREFIX_BYTES`` when
the message is larger (``truncated``); ``size`` and ``sha256`` always describe the whole
original payload, so a truncated letter still identifies it. ``raw_text`` is a readable form
(UTF-8 with replacement characters, first ``TEXT_PREVIEW_CHARS`` characters) for people and
grep. ``reason`` is a ``RejectReason`` value. (topic, partition, offset) identifies the
message, so a consumer can drop the duplicates a replay after a crash may add.

Bounded on purpose: the record (value and key together) never exceeds ``MAX_RECORD_BYTES``,
far below a producer's 1,000,000-byte message limit. An unbounded letter for a 750 KB event
(base64 makes it a third larger) was refused by the producer, stopped the flow, and the
restarted flow read the same event again: one bad event stopped the features for good.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from streamrec.events import RejectReason

TEXT_PREVIEW_CHARS = 512
RAW_PREFIX_BYTES = 65536
KEY_MAX_BYTES = 1024
DETAIL_MAX_CHARS = 500
MAX_RECORD_BYTES = 100_000  # what the limits above add up to, with room to spare


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A refused message and why.

    ``raw`` is the payload, or its first ``RAW_PREFIX_BYTES`` when ``size`` (the original
    length) is larger; ``sha256`` is the hex digest of the whole original payload. Build one
    from a message with ``dead_letter``, which applies these bounds.
    """

    raw: bytes
    size: int
    sha256: str
    reason: RejectReason
    detail: str
    topic: str
    partition: int
    offset: int
    key: bytes = b""

    @property
    def truncated(self) -> bool:
        return self.size > len(self.raw)


def dead_letter(
    raw: bytes,
    reason: RejectReason,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes = b"",
) -> DeadLetter:
    """The letter for a refused message, bounded as soon as it is made (a huge payload is
    not carried through the flow's steps, only its prefix, size and digest)."""
    return DeadLetter(
        raw=raw[:RAW_PREFIX_BYTES],
        size=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
        reason=reason,
        detail=detail[:DETAIL_MAX_CHARS],
        topic=topic,
        partition=partition,
        offset=offset,
        key=key[:KEY_MAX_BYTES],
    )


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """The bytes that go on ``events-dlq`` (at most ``MAX_RECORD_BYTES`` with the key)."""
    return orjson.dumps(
        {
            "reason": letter.reason.value,
            "detail": letter.detail,
            "topic": letter.topic,
            "partition": letter.partition,
            "offset": letter.offset,
            "size": letter.size,
            "sha256": letter.sha256,
            "truncated": letter.truncated,
            "raw_b64": base64.b64encode(letter.raw).decode("ascii"),
            "raw_text": letter.raw[: TEXT_PREVIEW_CHARS * 4].decode("utf-8", "replace")[
                :TEXT_PREVIEW_CHARS
            ],
        }
    )


def decode_dead_letter(payload: bytes, key: bytes | None = b"") -> DeadLetter:
    """Inverse of ``encode_dead_letter`` (``key``: the record's key); ``ValueError`` on others."""
    try:
        data: dict[str, Any] = orjson.loads(payload)
        return DeadLetter(
            raw=base64.b64decode(data["raw_b64"], validate=True),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            reason=RejectReason(data["reason"]),
            detail=str(data["detail"]),
            topic=str(data["topic"]),
            partition=int(data["partition"]),
            offset=int(data["offset"]),
            key=key or b"",
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a dead-letter record: {exc!r}") from exc
