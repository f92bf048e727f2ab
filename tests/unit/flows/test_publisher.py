"""The publisher: refuses nothing silently and crashes on nothing it cannot retry, keeps the
item categories as recoverable state, and writes them again after Redis lost data."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from flows.metrics import FlowMetrics
from flows.publisher import _Clients, _PublishPartition
from flows.redis_resync import ResyncNote, new_marker
from flows.shard import ShardOutput
from streamrec.alerts import Alert
from streamrec.settings import FlowSettings, Settings

SETTINGS = Settings(flow=FlowSettings(redis_check_s=3600.0))


class Producer:
    """Refuses, like librdkafka, messages over ``limit`` bytes at ``produce``."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.limit = limit
        self.sent: list[tuple[str, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes, timestamp: int = 0) -> None:
        if len(value) > self.limit:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.sent.append((topic, value))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


class Pipe:
    def __init__(self) -> None:
        self.commands: list[tuple] = []

    def hset(self, key: str, mapping: dict) -> None:
        self.commands.append(("hset", key, mapping))

    def __len__(self) -> int:
        return len(self.commands)

    def execute(self) -> None:
        return None


class Writer:
    def submit(self, job: Callable[[], None]) -> None:
        job()

    def drain(self) -> None:
        return None


class Marker:
    def __init__(self) -> None:
        self.value = new_marker()

    def read(self) -> tuple[str, bool]:
        return self.value, False


def publisher(resume: bytes | None = None) -> tuple[_PublishPartition, SimpleNamespace]:
    pipes: list[Pipe] = []

    def pipeline(transaction: bool) -> Pipe:
        pipes.append(Pipe())
        return pipes[-1]

    clients = SimpleNamespace(
        producer=Producer(),
        marker=Marker(),
        redis=SimpleNamespace(pipeline=pipeline),
        new_batch=lambda: pipeline(transaction=False),
        write_sessions=lambda args, client: None,
        writer=Writer(),
        delivery_errors=[],
        alerts=SimpleNamespace(sent=[]),
        pipes=pipes,
    )
    clients.alerts.send = clients.alerts.sent.append
    metrics = FlowMetrics(CollectorRegistry())
    return _PublishPartition(clients, SETTINGS, metrics, None, resume), clients  # type: ignore[arg-type]


def sample(metrics: FlowMetrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_message_over_the_producers_limit_is_counted_and_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    part, clients = publisher()
    part._check.due(None)  # the first check, done: the test is about producing
    out = ShardOutput(examples=[(b"s1", b"x" * 2_000_000, 0), (b"s2", b"ok", 0)])
    part.write_batch([out])
    examples = SETTINGS.kafka.topic_prefix + "training-examples"
    assert clients.producer.sent == [(examples, b"ok")]
    metrics = part._metrics
    assert sample(metrics, "streamrec_flow_messages_refused_total", {"topic": examples}) == 1
    assert sample(metrics, "streamrec_flow_messages_out_total", {"topic": examples}) == 1
    [line] = [r.fields for r in caplog.records if r.getMessage() == "flow_message_refused"]  # type: ignore[attr-defined]
    assert (line["topic"], line["key"], line["size"]) == (examples, "s1", 2_000_000)


def test_a_broker_refusing_a_message_as_too_large_does_not_fail_the_snapshot() -> None:
    clients = _Clients.__new__(_Clients)  # only the delivery callback, no connections
    clients.metrics, clients.delivery_errors = FlowMetrics(CollectorRegistry()), []
    refused = SimpleNamespace(topic=lambda: "dlq", key=lambda: b"k", value=lambda: b"v" * 10)
    clients._on_error(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), refused)  # type: ignore[arg-type]
    assert clients.delivery_errors == []
    clients._on_error(KafkaError(KafkaError._MSG_TIMED_OUT), refused)  # type: ignore[arg-type]
    assert len(clients.delivery_errors) == 1, "other delivery errors still stop the epoch"


def test_categories_are_recoverable_state_and_encoded_only_when_they_change() -> None:
    part, _ = publisher()
    part.write_batch([ShardOutput(item_categories={"i1": "c1", "i2": "c2"})])
    state = part.snapshot()
    assert part.snapshot() is state, "unchanged: not encoded again"
    restored, clients = publisher(state)
    assert restored._categories == {"i1": "c1", "i2": "c2"}
    restored._check.due(restored._synced)
    restored.write_batch([ShardOutput(item_categories={"i1": "c1", "i3": "c3"})])
    [pipe] = clients.pipes
    assert pipe.commands == [("hset", restored._keys.item_categories, {"i3": "c3"})]
    assert orjson.loads(restored.snapshot())["categories"] == {"i1": "c1", "i2": "c2", "i3": "c3"}


def test_after_redis_lost_data_every_category_is_written_again() -> None:
    part, clients = publisher()
    part.write_batch([ShardOutput(item_categories={"i1": "c1", "i2": "c2"})])
    synced = part._synced
    assert synced == clients.marker.value
    clients.marker.value = new_marker()  # another owner found Redis empty and set it
    part._check._next_s = 0.0
    part.write_batch([])
    assert clients.pipes[-1].commands == [
        ("hset", part._keys.item_categories, {"i1": "c1", "i2": "c2"})
    ]
    assert part._synced == clients.marker.value != synced
    assert orjson.loads(part.snapshot())["synced"] == clients.marker.value
    assert (
        sample(part._metrics, "streamrec_flow_resync_entries_total", {"state": "categories"}) == 2
    )


def test_the_owner_that_found_the_loss_raises_one_alert() -> None:
    part, clients = publisher()
    part._check.due(None)
    part.write_batch([ResyncNote("sessions", 120, "m2", detected=False)])
    assert clients.alerts.sent == []
    part.write_batch([ResyncNote("sessions", 80, "m2", detected=True)])
    [alert] = clients.alerts.sent
    assert isinstance(alert, Alert)
    assert (alert.detector, alert.signal, alert.runbook) == (
        "redis_resync", "marker_missing", "docs/runbook.md#redis-re-sync",
    )  # fmt: skip
    assert (
        sample(part._metrics, "streamrec_flow_resync_entries_total", {"state": "sessions"}) == 200
    )
