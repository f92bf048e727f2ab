"""Impressions: queued off the request path, sent as contract events, bounded when Kafka lags."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from serving.impression_log import ImpressionLog
from serving.metrics import ServingMetrics
from streamrec.events import Event, parse_event


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.callbacks: list[Any] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        self.sent.append((topic, value, key))
        self.callbacks.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        for callback in self.callbacks:
            callback(None, None)
        self.callbacks.clear()
        return 0

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


def log_with(producer: RecordingProducer, queue_max: int = 100) -> ImpressionLog:
    return ImpressionLog(
        producer,  # type: ignore[arg-type]
        "impressions",
        ServingMetrics(CollectorRegistry()),
        batch_ms=5,
        batch_size=10,
        queue_max=queue_max,
    )


def counted(log: ImpressionLog, outcome: str) -> float | None:
    return log.metrics.registry.get_sample_value(
        "streamrec_serving_impressions_total", {"outcome": outcome}
    )


def test_impressions_become_contract_events_keyed_by_session_with_arm_and_explored() -> None:
    producer = RecordingProducer()
    log = log_with(producer)
    log.start()
    log.record(("req-1", "sess-9", 1_700_000_000_000, ("a", "b"), 7, "canary", (1,)))
    log.record(("req-2", "sess-9", 1_700_000_000_001, ("c",), None, "popularity", ()))
    assert log.close(timeout_s=5) == 0
    assert [key for _, _, key in producer.sent] == [b"sess-9", b"sess-9"]
    first = parse_event(producer.sent[0][1])
    assert isinstance(first, Event)
    assert (first.type, first.event_id, first.request_id) == ("impression", "req-1", "req-1")
    assert first.items == ("a", "b") and first.model_version == 7
    assert (first.arm, first.explored) == ("canary", (1,))
    second = parse_event(producer.sent[1][1])
    assert isinstance(second, Event) and second.model_version is None
    assert (second.arm, second.explored) == ("popularity", ())
    assert counted(log, "sent") == 2


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    producer = RecordingProducer()
    log = log_with(producer, queue_max=3)
    for n in range(5):
        log.record((f"r{n}", "s", 1_700_000_000_000, ("a",), 1, "online", ()))
    assert counted(log, "dropped") == 2
    log.close(timeout_s=5)
    assert len(producer.sent) == 3
