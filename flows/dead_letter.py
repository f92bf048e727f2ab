"""The dead-letter record: what the flow writes to ``events-dlq`` for every refused message.

One JSON object per refused message, with the original message's key as its key::

    {"reason": "malformed_json", "detail": "...", "topic": "clicks", "partition": 3,
     "offset": 1234, "raw_b64": "eyJldmVudF9pZCI6...", "raw_text": "{\\"event_id\\":..."}

``raw_b64`` holds the original bytes exactly; ``raw_text`` is a readable form (UTF-8 with
replacement characters, first ``TEXT_PREVIEW_CHARS`` characters) for people and grep.
``reason`` is a ``RejectReason`` value. (topic, partition, offset) identifies the message,
so a consumer can drop the duplicates a replay after a crash may add.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from streamrec.events import RejectReason

TEXT_PREVIEW_CHARS = 512


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A refused message and why."""

    raw: bytes
    reason: RejectReason
    detail: str
    topic: str
    partition: int
    offset: int
    key: bytes = b""


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """The bytes that go on ``events-dlq``."""
    return orjson.dumps(
        {
            "reason": letter.reason.value,
            "detail": letter.detail,
            "topic": letter.topic,
            "partition": letter.partition,
            "offset": letter.offset,
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
            reason=RejectReason(data["reason"]),
            detail=str(data["detail"]),
            topic=str(data["topic"]),
            partition=int(data["partition"]),
            offset=int(data["offset"]),
            key=key or b"",
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a dead-letter record: {exc!r}") from exc
