"""Session reads: concurrent requests share a pipeline, and each gets its own reply or error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from serving.session_reader import SessionReader


class FakePipeline:
    def __init__(self, client: FakeRedis) -> None:
        self.client = client
        self.keys: list[str] = []

    def hgetall(self, key: str) -> None:
        self.keys.append(key)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        assert not raise_on_error, "one bad key must not fail the others"
        self.client.pipelines.append(list(self.keys))
        await self.client.answer.wait()  # the round trip: other reads queue meanwhile
        if self.client.down is not None:
            raise self.client.down
        return [self.client.data.get(key, {}) for key in self.keys]


class FakeRedis:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.pipelines: list[list[str]] = []
        self.down: Exception | None = None
        self.answer = asyncio.Event()
        self.answer.set()

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)


def read_all(reader: SessionReader, keys: list[str]) -> list[Any]:
    async def main() -> list[Any]:
        return await asyncio.gather(*(reader.read(k) for k in keys), return_exceptions=True)

    return asyncio.run(main())


def test_reads_of_one_moment_share_a_pipeline() -> None:
    client = FakeRedis({"a": {b"items": b"1"}, "b": {b"items": b"2"}})
    replies = read_all(SessionReader(client), ["a", "b", "c", "a"])  # type: ignore[arg-type]
    assert client.pipelines == [["a", "b", "c", "a"]]
    assert replies == [{b"items": b"1"}, {b"items": b"2"}, {}, {b"items": b"1"}]


def test_a_lone_read_goes_at_once_and_later_ones_wait_for_it_then_go_together() -> None:
    client = FakeRedis({"a": {b"x": b"1"}})
    client.answer.clear()
    reader = SessionReader(client)  # type: ignore[arg-type]

    async def main() -> list[Any]:
        first = asyncio.ensure_future(reader.read("a"))
        while not client.pipelines:  # the lone read is sent without waiting for others
            await asyncio.sleep(0)
        later = [asyncio.ensure_future(reader.read(key)) for key in ("b", "c", "d")]
        await asyncio.sleep(0)
        assert client.pipelines == [["a"]], "nothing else is sent while a pipeline is out"
        client.answer.set()
        return await asyncio.gather(first, *later)

    assert asyncio.run(main()) == [{b"x": b"1"}, {}, {}, {}]
    assert client.pipelines == [["a"], ["b", "c", "d"]]


def test_pipelines_hold_at_most_max_batch_reads() -> None:
    client = FakeRedis({})
    read_all(SessionReader(client, max_batch=2), ["a", "b", "c"])  # type: ignore[arg-type]
    assert client.pipelines == [["a", "b"], ["c"]]


def test_a_wrong_type_fails_only_its_own_read() -> None:
    wrong = redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
    client = FakeRedis({"a": {b"items": b"1"}, "bad": wrong})
    replies = read_all(SessionReader(client), ["a", "bad", "a"])  # type: ignore[arg-type]
    assert replies[0] == {b"items": b"1"} and replies[2] == {b"items": b"1"}
    assert replies[1] is wrong


def test_an_outage_fails_every_read_of_the_pipeline_and_the_reader_recovers() -> None:
    client = FakeRedis({"a": {b"x": b"1"}})
    client.down = redis.ConnectionError("refused")
    reader = SessionReader(client)  # type: ignore[arg-type]
    replies = read_all(reader, ["a", "b", "c"])
    assert all(isinstance(reply, redis.ConnectionError) for reply in replies)
    client.down = None
    assert read_all(reader, ["a"]) == [{b"x": b"1"}]


@pytest.mark.parametrize("count", [1, 5])
def test_every_read_is_answered_once(count: int) -> None:
    client = FakeRedis({f"k{n}": {b"n": str(n).encode()} for n in range(count)})
    keys = [f"k{n}" for n in range(count)]
    replies = read_all(SessionReader(client), keys)  # type: ignore[arg-type]
    assert replies == [{b"n": str(n).encode()} for n in range(count)]
    assert sum(len(p) for p in client.pipelines) == count
