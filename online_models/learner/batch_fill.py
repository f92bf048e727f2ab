"""How the learner loop fills a micro-batch: up to ``batch_size`` messages, closed
``batch_ms`` after the first of them arrived.

A message already waiting when the loop comes back from a step arrived during that step,
so its ``batch_ms`` runs from when the previous batch was taken: a step as long as
``batch_ms`` closes the next batch at once instead of adding another ``batch_ms`` to the
wait of every example that arrived during it (docs/model.md, "Benchmark").

No consumer or clock of its own: the loop passes ``consume(count, timeout_s)`` (the Kafka
consumer's) and ``clock()``, so tests drive it without a broker or sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar


class Polled(Protocol):
    """What ``fill_batch`` reads of a polled message (``confluent_kafka.Message``)."""

    def error(self) -> object: ...


M = TypeVar("M", bound=Polled)


def fill_batch(
    consume: Callable[[int, float], list[M]],
    size: int,
    window_s: float,
    taken_s: float | None,
    clock: Callable[[], float],
) -> list[M]:
    """Up to ``size`` messages without an error, in the order read.

    ``taken_s`` is when the previous batch was taken (None before the first). Returns
    empty after one ``window_s`` without messages, so the loop can publish or stop.
    """
    batch = [message for message in consume(size, 0.0) if message.error() is None]
    opened = (clock() if taken_s is None else taken_s) if batch else None
    while len(batch) < size:
        wait = window_s if opened is None else opened + window_s - clock()
        if wait <= 0:
            break
        got = consume(size - len(batch), wait)
        batch.extend(message for message in got if message.error() is None)
        if batch and opened is None:
            opened = clock()
        if not got and opened is None:
            break  # idle: return so the caller can publish or stop
    return batch
