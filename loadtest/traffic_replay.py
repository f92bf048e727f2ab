"""Replay recorded traffic to Kafka: as fast as possible, at a fixed rate, or at N x real time.

Events are keyed by ``session_id`` (a session's events stay ordered in one partition)
and produced with an idempotent producer, so broker-side retries add no duplicates.
The counts returned are of events the broker acknowledged.

A replay stops at the first sign that events can no longer be delivered (a failed
delivery, every broker unreachable, or a fatal producer error such as a broker that
restarted empty) and reports what was acknowledged and why it stopped. Stopping fast
beats retrying for minutes: event ids are deterministic and the flow drops duplicates,
so running the replay again once the broker is back is safe.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from streamrec.events import Event, encode_event
from streamrec.kafka_clients import make_producer
from streamrec.recorded_events import LineRejection, Record
from streamrec.settings import KafkaSettings
from streamrec.topics import Topics

POLL_INTERVAL_S = 0.1  # how often delivery reports and client errors are served


@dataclass(slots=True)
class ReplayReport:
    """What a replay did.

    ``sent`` events were handed to the producer; ``produced`` of them were acknowledged
    by the broker and ``delivery_errors`` were not (failed, or given up when the replay
    stopped). ``error`` says why the replay stopped early (None: it ran to the end).
    """

    sent: int = 0
    produced: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    delivery_errors: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    error: str | None = None
    # Called with each acknowledged message (its value is the encoded event), for callers
    # that must know which events the broker holds (the fault run).
    on_acked: Callable[[Message], None] | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "produced": self.produced,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected),
            "delivery_errors": self.delivery_errors,
            "by_topic": dict(self.by_topic),
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.produced / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "error": self.error,
        }

    def record_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """The producer's delivery callback."""
        if err is None:
            self.produced += 1
            self.by_topic[msg.topic()] += 1
            if self.on_acked is not None:
                self.on_acked(msg)
        else:
            self.delivery_errors += 1
            self.fail(f"delivery to {msg.topic()} failed: {_describe(err)}")

    def fail(self, reason: str) -> None:
        """Record why the replay stops; the first reason is kept."""
        if self.error is None:
            self.error = reason


def stops_replay(err: KafkaError) -> bool:
    """Whether a client-level error means no more events will be delivered.

    Fatal errors end the idempotent producer for good; "all brokers down" means
    every broker is unreachable. Other client errors (one broker's connection
    dropping, a leader moving) are retried by librdkafka.
    """
    return err.fatal() or err.code() == KafkaError._ALL_BROKERS_DOWN


def _describe(err: KafkaError) -> str:
    """One line naming the error code and librdkafka's reason."""
    return f"Kafka {err.name()}: {err.str()}"


class Pacer:
    """Holds a replay to a fixed rate or to a multiple of real (event) time."""

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

    def due(self, event_ts_ms: int) -> float | None:
        """When (``time.perf_counter``) the next event is due; None when not paced."""
        if self.rate is not None:
            due = self._start + self._count / self.rate
        elif self.speed is not None:
            if self._first_ts is None:
                self._first_ts = event_ts_ms
            due = self._start + (event_ts_ms - self._first_ts) / 1000.0 / self.speed
        else:
            return None
        self._count += 1
        return due


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
    drain_timeout_s: float = 60.0,
    on_acked: Callable[[Message], None] | None = None,
) -> ReplayReport:
    """Produce ``records`` to their topics; return counts of produced and rejected lines.

    Never raises for a broker fault: the report's ``error`` says why it stopped. Waits
    at most ``drain_timeout_s`` for the last acknowledgements.
    """
    report = ReplayReport(on_acked=on_acked)
    pacer = Pacer(rate, speed)

    def on_error(err: KafkaError) -> None:
        if stops_replay(err):
            report.fail(_describe(err))

    producer = make_producer(kafka, error_cb=on_error)
    total = limit if limit is not None else total_hint
    started = polled = time.perf_counter()
    columns = [
        TextColumn("replay"),
        BarColumn(),
        TextColumn("{task.completed:,} events"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("replay", total=total)
        for record in records:
            if report.error is not None or (limit is not None and report.sent >= limit):
                break
            if isinstance(record, LineRejection):
                report.rejected[record.rejection.reason.value] += 1
                continue
            event: Event = record
            due = pacer.due(event.ts)
            if due is not None:
                _wait_until(producer, due, report)
            if not _produce(producer, topics.for_event_type(event.type), event, report):
                break
            report.sent += 1
            if time.perf_counter() - polled >= POLL_INTERVAL_S:
                producer.poll(0)
                bar.update(task, completed=report.sent)
                polled = time.perf_counter()
        bar.update(task, completed=report.sent)
        _drain(producer, report, drain_timeout_s)
    report.elapsed_s = time.perf_counter() - started
    return report


def _wait_until(producer: Producer, due: float, report: ReplayReport) -> None:
    """Serve delivery reports and client errors until ``due`` (perf_counter) or a failure."""
    while report.error is None and (ahead := due - time.perf_counter()) > 1e-3:
        producer.poll(ahead)


def _produce(producer: Producer, topic: str, event: Event, report: ReplayReport) -> bool:
    """Hand ``event`` to the producer, waiting while its queue is full; False if it failed."""
    payload = encode_event(event)
    while report.error is None:
        try:
            producer.produce(
                topic, payload, event.session_id.encode(), on_delivery=report.record_delivery
            )
            return True
        except BufferError:
            producer.poll(0.05)
        except KafkaException as exc:
            producer.poll(0)  # a fatal error's cause arrives through the error callback
            report.fail(_describe(exc.args[0]))
    return False


def _drain(producer: Producer, report: ReplayReport, timeout_s: float) -> None:
    """Wait for the outstanding acknowledgements, then give up on those still missing.

    Stops waiting as soon as the replay has failed: with the broker gone nothing more
    will be acknowledged. What is given up counts as failed deliveries.
    """
    deadline = time.perf_counter() + timeout_s
    while report.error is None and len(producer) and time.perf_counter() < deadline:
        producer.flush(POLL_INTERVAL_S)
    if len(producer):
        report.fail(f"{len(producer)} events not acknowledged within {timeout_s:g} s")
        producer.purge()
        producer.flush(1.0)  # serves the purged events' delivery reports
        report.delivery_errors += len(producer)
