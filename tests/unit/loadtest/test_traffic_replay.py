"""Replay stops on the first fault that ends delivery and reports it instead of raising."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from confluent_kafka import KafkaError, KafkaException

import loadtest.traffic_replay as traffic_replay
from loadtest.traffic_replay import replay, stops_replay
from streamrec.events import Event
from streamrec.settings import KafkaSettings
from streamrec.topics import Topics

EVENTS = [Event(f"e{i}", "click", f"s{i % 7}", 1_700_000_000_000 + i, f"i{i}") for i in range(50)]


@dataclass
class FakeMessage:
    name: str

    def topic(self) -> str:
        return self.name


@dataclass
class FatalAfter:
    """A producer that takes ``accepted`` events, acknowledges ``acked`` of them, then fails
    the way librdkafka does after a fatal error: ``produce`` raises, the cause goes to the
    error callback."""

    accepted: int
    acked: int
    error_cb: object
    pending: list = field(default_factory=list)
    failed: bool = False

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery) -> None:
        if self.accepted == 0:
            self.failed = True
            raise KafkaException(KafkaError(KafkaError._FATAL, "Local: Fatal error", fatal=True))
        self.accepted -= 1
        self.pending.append((topic, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        if self.failed:
            self.failed = False
            cause = "ProduceRequest failed: Broker: Broker received an out of order sequence"
            self.error_cb(KafkaError(KafkaError._FATAL, cause, fatal=True))
        while self.acked and self.pending:
            self.acked -= 1
            topic, on_delivery = self.pending.pop(0)
            on_delivery(None, FakeMessage(topic))
        return 0

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return len(self.pending)

    def purge(self) -> None:
        for topic, on_delivery in self.pending:
            on_delivery(KafkaError(KafkaError._PURGE_QUEUE), FakeMessage(topic))
        self.pending.clear()

    def __len__(self) -> int:
        return len(self.pending)


def test_a_fatal_producer_error_ends_the_replay_with_its_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        traffic_replay,
        "make_producer",
        lambda kafka, error_cb: FatalAfter(accepted=20, acked=17, error_cb=error_cb),
    )
    report = replay(EVENTS, KafkaSettings(), Topics.from_settings(KafkaSettings()), progress=False)
    assert (report.sent, report.produced, report.delivery_errors) == (20, 17, 3)
    assert report.error is not None and "out of order sequence" in report.error
    assert report.as_dict()["error"] == report.error


@pytest.mark.parametrize(
    ("error", "stops"),
    [
        (KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"), True),
        (KafkaError(KafkaError._FATAL, "fenced", fatal=True), True),
        (KafkaError(KafkaError._TRANSPORT, "connection reset"), False),
        (KafkaError(KafkaError._RESOLVE, "kafka-2: name not known"), False),
    ],
)
def test_only_errors_that_end_delivery_stop_a_replay(error: KafkaError, stops: bool) -> None:
    assert stops_replay(error) is stops
