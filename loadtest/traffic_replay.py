"""Replay recorded traffic to Kafka: as fast as possible, at a fixed rate, or at N x real time.

Events are keyed by ``session_id`` (a session's events stay ordered in one partition)
and produced with an idempotent producer, so broker-side retries add no duplicates.
The counts returned are of events the broker acknowledged.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from streamrec.events import Event, encode_event
from streamrec.kafka_clients import make_producer
from streamrec.recorded_events import LineRejection, Record
from streamrec.settings import KafkaSettings
from streamrec.topics import Topics


@dataclass(slots=True)
class ReplayReport:
    """What a replay did."""

    produced: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    delivery_errors: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "produced": self.produced,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected),
            "delivery_errors": self.delivery_errors,
            "by_topic": dict(self.by_topic),
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.produced / self.elapsed_s, 1) if self.elapsed_s else 0.0,
        }


class Pacer:
    """Holds a replay to a fixed rate or to a multiple of real (event) time.

    Sleeps only when more than a millisecond ahead, so pacing costs little at high rates.
    """

    def __init__(self, rate: float | None = None, speed: float | None = None) -> None:
        if rate is not None and speed is not None:
            raise ValueError("give --rate or --speed, not both")
        if (rate is not None and rate <= 0) or (speed is not None and speed <= 0):
            raise ValueError("rate and speed must be positive")
        self.rate = rate
        self.speed = speed
        self._start = time.perf_counter()
        self._first_ts: int | None = None
        self._count = 0

    def wait(self, event_ts_ms: int) -> None:
        """Block until the next event is due."""
        if self.rate is not None:
            due = self._start + self._count / self.rate
        elif self.speed is not None:
            if self._first_ts is None:
                self._first_ts = event_ts_ms
            due = self._start + (event_ts_ms - self._first_ts) / 1000.0 / self.speed
        else:
            return
        self._count += 1
        ahead = due - time.perf_counter()
        if ahead > 0.001:
            time.sleep(ahead)


def replay(
    records: Iterable[Record],
    kafka: KafkaSettings,
    topics: Topics,
    *,
    rate: float | None = None,
    speed: float | None = None,
    limit: int | None = None,
    progress: bool = True,
    total_hint: int | None = None,
) -> ReplayReport:
    """Produce ``records`` to their topics; return counts of produced and rejected lines."""
    report = ReplayReport()
    producer = make_producer(kafka)
    pacer = Pacer(rate, speed)

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is None:
            report.produced += 1
            report.by_topic[msg.topic()] += 1
        else:
            report.delivery_errors += 1

    total = limit if limit is not None else total_hint
    started = time.perf_counter()
    columns = [
        TextColumn("replay"),
        BarColumn(),
        TextColumn("{task.completed:,} events"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("replay", total=total)
        sent = 0
        for record in records:
            if limit is not None and sent >= limit:
                break
            if isinstance(record, LineRejection):
                report.rejected[record.rejection.reason.value] += 1
                continue
            event: Event = record
            pacer.wait(event.ts)
            _produce(producer, topics.for_event_type(event.type), event, on_delivery)
            sent += 1
            if sent % 2000 == 0:
                producer.poll(0)
                bar.update(task, completed=sent)
        bar.update(task, completed=sent)
        remaining = producer.flush(60)
    if remaining:
        report.delivery_errors += remaining
    report.elapsed_s = time.perf_counter() - started
    return report


def _produce(producer, topic: str, event: Event, on_delivery) -> None:
    payload = encode_event(event)
    while True:
        try:
            producer.produce(topic, payload, event.session_id.encode(), on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)
