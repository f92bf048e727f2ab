"""Routing a polled batch: events to their session's shard, everything else to dead letters."""

from __future__ import annotations

import orjson

from flows.event_routing import EventRouter, SourceBatch, shard_of
from streamrec.events import EventLimits, RejectReason


class FakeMessage:
    def __init__(self, value: bytes | None, key: bytes | None, offset: int) -> None:
        self._value, self._key, self._offset = value, key, offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self._offset)


def click(session: str, n: int) -> bytes:
    return orjson.dumps(
        {"event_id": f"e{n}", "type": "click", "session_id": session, "ts": 1_700_000_000_000,
         "item_id": "i"}
    )  # fmt: skip


def test_shard_of_is_stable_across_processes() -> None:
    assert shard_of("abc", 1000) == 578  # zlib.crc32(b"abc") % 1000, never Python's hash()


def test_events_go_to_their_sessions_shard_in_offset_order() -> None:
    router = EventRouter(EventLimits(), shards=4)
    messages = [FakeMessage(click(f"s{n % 3}", n), f"s{n % 3}".encode(), n) for n in range(30)]
    routed = router.route(SourceBatch("clicks", 1, messages, read_ms=123.0))
    total = 0
    for key, shard in routed:
        assert {shard_of(e.session_id, 4) for e in shard.events} == {int(key[6:])}
        assert shard.offsets == sorted(shard.offsets)
        assert shard.read_ms == 123.0
        assert shard.produce_ms == [1_700_000_000_000 + o for o in shard.offsets]
        total += len(shard.events)
    assert total == 30


def test_bad_messages_become_dead_letters_with_reason_and_position() -> None:

    router = EventRouter(EventLimits(), shards=4)
    impression = orjson.dumps(
        {"event_id": "x", "type": "impression", "session_id": "s", "ts": 1_700_000_000_000,
         "items": ["a"], "request_id": "r"}
    )  # fmt: skip
    messages = [
        FakeMessage(b"{not json", b"k1", 10),
        FakeMessage(None, None, 11),
        FakeMessage(impression, b"s", 12),
        FakeMessage(click("s", 1), b"s", 13),
    ]
    routed = router.route(SourceBatch("clicks", 2, messages))
    letters = [letter for _, shard in routed for letter in shard.dead_letters]
    assert sorted((letter.offset, letter.reason) for letter in letters) == [
        (10, RejectReason.MALFORMED_JSON),
        (11, RejectReason.MALFORMED_JSON),
    ]
    assert all(letter.topic == "clicks" and letter.partition == 2 for letter in letters)
    assert next(x for x in letters if x.offset == 10).raw == b"{not json"
    assert sum(len(shard.events) for _, shard in routed) == 2


def test_impressions_go_to_their_sessions_shard_for_the_exposure_join() -> None:
    router = EventRouter(EventLimits(), shards=4)
    impression = orjson.dumps(
        {"event_id": "x", "type": "impression", "session_id": "s7", "ts": 1_700_000_000_000,
         "items": ["a"], "request_id": "r"}
    )  # fmt: skip
    routed = router.route(SourceBatch("impressions", 0, [FakeMessage(impression, b"s7", 5)]))
    assert [(key, [e.type for e in shard.events]) for key, shard in routed] == [
        (f"shard-{shard_of('s7', 4):03d}", ["impression"])
    ]
