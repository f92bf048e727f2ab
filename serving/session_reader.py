"""Session hashes read from Redis in pipelines shared by the requests of one worker.

A lone ``HGETALL`` costs redis-py's asyncio client more CPU than Redis takes to answer
it (a connection taken from the pool and given back, a timeout armed per send and per
read), about as much as the rest of a request's own Python work. So the requests that
need a session at the same time share the round trip: a read goes out at once when none
is in flight (a lone request is never delayed), and the reads asked for meanwhile leave
together, as one pipeline, as soon as it is back.

Each request gets its own reply or its own error: a key of the wrong type fails only the
request that read it (``WRONGTYPE``), a timeout or a broken connection every request of
that pipeline (they all waited on it). The client's retry policy applies to the pipeline
as it would to each read. Everything runs on the event loop's thread. On a Redis Cluster
the pipeline goes out as one round trip per node holding one of its sessions.
"""

from __future__ import annotations

import asyncio

from streamrec.redis_connection import AsyncRedisClient

Reply = dict[bytes, bytes]


class SessionReader:
    """``read(key)`` is ``HGETALL key``, pipelined with the reads waiting beside it."""

    def __init__(self, client: AsyncRedisClient, max_batch: int = 64) -> None:
        self.client = client
        self.max_batch = max_batch
        self._waiting: list[tuple[str, asyncio.Future[Reply]]] = []
        self._sending: asyncio.Task[None] | None = None

    async def read(self, key: str) -> Reply:
        """The hash at ``key`` (empty when there is none); raises what Redis raised."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        if self._sending is None:
            self._sending = asyncio.create_task(self._send_all())
        return await future

    async def _send_all(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                await self._send(batch)
        finally:
            self._sending = None

    async def _send(self, batch: list[tuple[str, asyncio.Future[Reply]]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, _ in batch:
            pipe.hgetall(key)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the whole round trip failed: every reader gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # the request went away (client disconnected)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
