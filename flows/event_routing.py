"""Parse a batch of Kafka messages and split it by state shard.

A session's events always go to the same shard (a stable CRC32 of the session id, never
Python's salted ``hash``), so one shard owns all of a session's state, whichever topic or
partition its events come from and however many workers run. Refused messages become
``DeadLetter`` records in the shard of their message key; nothing is dropped (a huge refused
payload travels on only as its bounded prefix, size and digest).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Protocol

from flows.dead_letter import DeadLetter, dead_letter
from streamrec.events import Event, EventLimits, Rejection, RejectReason, parse_events

FEATURE_EVENT_TYPES = frozenset(("click", "purchase"))
# Impressions go to their session's shard too: its exposure join pairs them with the clicks.
ROUTED_EVENT_TYPES = FEATURE_EVENT_TYPES | {"impression"}


class SourceMessage(Protocol):
    """The part of ``confluent_kafka.Message`` the flow reads."""

    def value(self) -> bytes | None: ...

    def key(self) -> bytes | None: ...

    def offset(self) -> int: ...

    def timestamp(self) -> tuple[int, int]: ...


@dataclass(frozen=True, slots=True)
class SourceBatch:
    """Messages read in one poll of one topic partition, in offset order.

    ``read_ms`` is when the poll returned (epoch ms): freshness splits at it into the time
    before the flow had the message and the time the flow took.
    """

    topic: str
    partition: int
    messages: list[SourceMessage]
    read_ms: float = 0.0


@dataclass(slots=True)
class ShardInput:
    """The valid events and the dead letters of one source batch that belong to one shard.

    ``offsets`` and ``produce_ms`` run parallel to ``events`` (produce time is the Kafka
    message timestamp, used to measure freshness); ``read_ms`` is the source batch's.
    """

    topic: str
    partition: int
    events: list[Event] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    produce_ms: list[int] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    read_ms: float = 0.0


def shard_of(session_id: str, shards: int) -> int:
    """The shard owning ``session_id`` (stable across processes and runs)."""
    return zlib.crc32(session_id.encode()) % shards


def shard_key(index: int) -> str:
    """The Bytewax state key of shard ``index``."""
    return f"shard-{index:03d}"


class EventRouter:
    """Turns a ``SourceBatch`` into ``(shard_key, ShardInput)`` pairs; pure apart from time."""

    def __init__(self, limits: EventLimits, shards: int) -> None:
        self.limits = limits
        self.shards = shards
        self.keys = [shard_key(index) for index in range(shards)]

    def route(self, batch: SourceBatch) -> list[tuple[str, ShardInput]]:
        """Parse every message; group events and dead letters by shard, keeping offset order."""
        shards = self.shards
        crc32 = zlib.crc32
        topic, partition, read_ms = batch.topic, batch.partition, batch.read_ms
        messages = batch.messages
        results = parse_events([message.value() or b"" for message in messages], self.limits)
        by_shard: dict[int, ShardInput] = {}
        for message, result in zip(messages, results, strict=True):
            if type(result) is Event and result.type in ROUTED_EVENT_TYPES:
                index = crc32(result.session_id.encode()) % shards
                shard = by_shard.get(index)
                if shard is None:
                    shard = by_shard[index] = ShardInput(topic, partition, read_ms=read_ms)
                shard.events.append(result)
                shard.offsets.append(message.offset())
                shard.produce_ms.append(message.timestamp()[1])
                continue
            if type(result) is Event:
                result = Rejection(RejectReason.UNKNOWN_TYPE, f"{result.type} on {topic}")
            key = message.key() or b""
            index = crc32(key) % shards
            shard = by_shard.get(index)
            if shard is None:
                shard = by_shard[index] = ShardInput(topic, partition, read_ms=read_ms)
            raw = message.value() or b""
            offset = message.offset()
            shard.dead_letters.append(
                dead_letter(raw, result.reason, result.detail, topic, partition, offset, key)
            )
        return [(self.keys[index], shard) for index, shard in by_shard.items()]
