"""Impressions to Kafka, batched and asynchronous, never on a request's critical path.

A request only appends a small tuple to an in-memory deque (a few hundred nanoseconds,
no lock, no I/O). A background thread wakes every ``batch_ms``, turns up to ``batch_size``
queued entries into ``impression`` events and hands them to an idempotent producer, which
batches again on the wire. When Kafka is slow or down the queue is bounded: new
impressions beyond ``queue_max`` are dropped and counted rather than slowing requests.

Delivery: at least once per impression that reaches the producer (idempotent producer,
``event_id`` = request id, so consumers deduplicate); impressions still queued when the
process is killed are lost, and ``close`` flushes what is queued on a graceful stop.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from confluent_kafka import KafkaError, Producer

from serving.metrics import ServingMetrics
from streamrec.events import Event, encode_event
from streamrec.structured_log import log_event

logger = logging.getLogger(__name__)

# request_id, session_id, ts_ms, item ids, model version (None for the popular fallback),
# experiment arm, positions filled by exploration slots
Impression = tuple[str, str, int, tuple[str, ...], int | None, str | None, tuple[int, ...]]


def impression_event(impression: Impression) -> Event:
    """The contract event for one answered request."""
    request_id, session_id, ts_ms, items, version, arm, explored = impression
    return Event(
        event_id=request_id,
        type="impression",
        session_id=session_id,
        ts=ts_ms,
        request_id=request_id,
        items=items,
        model_version=version,
        arm=arm,
        explored=explored,
    )


class ImpressionLog:
    """Queue + flusher thread in front of a Kafka producer (see module docstring)."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        metrics: ServingMetrics,
        *,
        batch_ms: int,
        batch_size: int,
        queue_max: int,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.metrics = metrics
        self.batch_s = batch_ms / 1000
        self.batch_size = batch_size
        self.queue_max = queue_max
        self._queue: deque[Impression] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
        self._sent = metrics.impressions.labels("sent")
        self._dropped = metrics.impressions.labels("dropped")
        self._failed = metrics.impressions.labels("failed")

    def start(self) -> None:
        self._thread.start()

    def record(self, impression: Impression) -> None:
        """Queue one impression; drops (and counts) it when the queue is full. Never blocks."""
        if len(self._queue) >= self.queue_max:
            self._dropped.inc()
            return
        self._queue.append(impression)

    def close(self, timeout_s: float) -> int:
        """Stop the flusher, send what is queued and wait for delivery; return undelivered."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._drain(len(self._queue))
        return self.producer.flush(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.batch_s):
            while self._drain(self.batch_size) == self.batch_size:
                pass
            self.producer.poll(0)

    def _drain(self, limit: int) -> int:
        sent = 0
        while sent < limit and self._queue:
            impression = self._queue.popleft()
            try:
                self.producer.produce(
                    self.topic,
                    encode_event(impression_event(impression)),
                    key=impression[1].encode(),
                    on_delivery=self._delivered,
                )
            except BufferError:
                self.producer.poll(0.05)
                self._queue.appendleft(impression)
                break
            sent += 1
        return sent

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is None:
            self._sent.inc()
            return
        self._failed.inc()
        log_event(logger, "impression_delivery_failed", logging.WARNING, error=str(error))
