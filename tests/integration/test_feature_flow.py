"""The feature flow on the real broker and Redis: exact features, dedupe, dead letters, scale-out.

Helpers here (``flow_settings``, ``run_flow_in_process``, ``flow_process``, ``read_state``)
are also used by the crash test in tests/faults/.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from flows.dataflow import build_flow
from flows.dead_letter import decode_dead_letter
from flows.feature_config import FeatureConfig
from flows.metrics import FlowMetrics
from flows.runner import ensure_recovery_dir
from loadtest.traffic_replay import replay
from streamrec.events import Event, RejectReason, encode_event
from streamrec.kafka_clients import ensure_topics, make_producer
from streamrec.redis_connection import connect_redis
from streamrec.redis_keys import RedisKeys
from streamrec.session_features import SessionFeatures, decode_session_features
from streamrec.settings import Settings
from streamrec.topics import Topics
from streamrec.training_examples import decode_example
from tests.conftest import free_port
from tests.kafka_reading import read_topic
from tests.process_env import process_env
from tests.unit.flows.test_shard import reference_features, run_shard, sample_events

pytestmark = pytest.mark.integration

FLOW_TIMEOUT_S = 120


@pytest.fixture(autouse=True)
def derived_keys_removed(settings: Settings) -> Iterator[None]:
    """Keys under the tagged prefixes ``flow_settings`` makes are deleted after the test."""
    yield
    client = redis.Redis.from_url(settings.redis.redis_url.get_secret_value())
    keys = list(client.scan_iter(f"{settings.redis.key_prefix}-*", count=2000))
    for start in range(0, len(keys), 2000):
        client.delete(*keys[start : start + 2000])


def flow_settings(settings: Settings, tag: str = "", **flow: object) -> Settings:
    """``settings`` with flow overrides; a ``tag`` also gives own topics, keys and recovery."""
    update: dict[str, object] = {"flow": settings.flow.model_copy(update=flow)}
    if tag:
        update["kafka"] = settings.kafka.model_copy(
            update={"topic_prefix": f"{settings.kafka.topic_prefix}{tag}-"}
        )
        update["redis"] = settings.redis.model_copy(
            update={"key_prefix": f"{settings.redis.key_prefix}-{tag}"}
        )
        update["flow"] = settings.flow.model_copy(
            update={"recovery_dir": settings.flow.recovery_dir.with_name(f"recovery-{tag}")} | flow
        )
    built = settings.model_copy(update=update)
    ensure_topics(built.kafka, Topics.from_settings(built.kafka).all())
    return built


def run_flow_in_process(settings: Settings) -> None:
    """Run the flow to the end of its topics, recovery on, in this process."""
    ensure_recovery_dir(settings.flow.recovery_dir, settings.flow.recovery_partitions)
    to_end = settings.model_copy(
        update={"flow": settings.flow.model_copy(update={"stop_at_end": True})}
    )
    run_main(
        build_flow(to_end, FlowMetrics(CollectorRegistry())),
        epoch_interval=timedelta(seconds=settings.flow.snapshot_interval_s),
        recovery_config=RecoveryConfig(settings.flow.recovery_dir),
    )


def flow_env(settings: Settings) -> dict[str, str]:
    """Environment for a ``streamrec flow`` process with these settings."""
    flow = settings.flow
    return process_env(
        settings,
        STREAMREC_FLOW_RECOVERY_DIR=str(flow.recovery_dir),
        STREAMREC_FLOW_METRICS_PORT="0",
        STREAMREC_LOG_LEVEL="WARNING",
        STREAMREC_FLOW_STOP_AT_END="true" if flow.stop_at_end else "false",
        STREAMREC_FLOW_SNAPSHOT_INTERVAL_S=str(flow.snapshot_interval_s),
        STREAMREC_FLOW_PUBLISH_PARTITIONS=str(flow.publish_partitions),
    )


def flow_process(settings: Settings, *args: str, log: Path | None = None) -> subprocess.Popen:
    """Start ``streamrec flow ARGS`` with these settings."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - child keeps it
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "flow", *args],
        env=flow_env(settings),
        stdout=out,
        stderr=out,
    )


def read_state(settings: Settings) -> dict[str, dict[bytes, bytes]]:
    """Every session hash under the settings' key prefix, raw."""
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    keys = RedisKeys(settings.redis.key_prefix)
    prefix = keys.session("")
    names = list(client.scan_iter(keys.session_pattern(), count=5000))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
    return {
        name.decode()[len(prefix) :]: fields
        for name, fields in zip(names, pipe.execute(), strict=True)
    }


def count_sessions(settings: Settings) -> int:
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    pattern = RedisKeys(settings.redis.key_prefix).session_pattern()
    return sum(1 for _ in client.scan_iter(pattern, count=5000))


def read_popular(settings: Settings) -> dict[str, float]:
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    pairs = client.zrange(RedisKeys(settings.redis.key_prefix).popular, 0, -1, withscores=True)
    return {item.decode(): score for item, score in pairs}


def decoded(state: dict[str, dict[bytes, bytes]]) -> dict[str, SessionFeatures]:
    return {sid: decode_session_features(fields) for sid, fields in state.items()}


def produce_events(settings: Settings, events: list[Event], **replay_options: object) -> None:
    report = replay(
        events, settings.kafka, Topics.from_settings(settings.kafka), progress=False,
        **replay_options,
    )  # fmt: skip
    assert report.produced == len(events)


def example_ids(settings: Settings, expected: set[str], timeout_s: float = 30) -> Counter[str]:
    """Example ids on the examples topic (with their counts), read until all of ``expected``
    arrived or the deadline passed."""
    topic = Topics.from_settings(settings.kafka).training_examples
    consumer = Consumer(settings.kafka.client_config() | {"group.id": "test-examples"})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    try:
        while not expected <= seen.keys() and time.monotonic() < deadline:
            for message in consumer.consume(10000, 0.2):
                if message.error() is None:
                    seen[decode_example(message.value()).example_id] += 1
        for message in consumer.consume(10000, 0.5):  # whatever else is already there
            if message.error() is None:
                seen[decode_example(message.value()).example_id] += 1
    finally:
        consumer.close()
    return seen


def expected_example_ids(events: list[Event]) -> set[str]:
    """The examples the pure feature logic makes from ``events``."""
    _, raw_examples = run_shard(events, FeatureConfig())
    return {decode_example(raw).example_id for raw in raw_examples}


def assert_popular_close(one: dict[str, float], two: dict[str, float]) -> None:
    """Same items and scores up to float summation order (the zset is rewritten absolutely)."""
    assert one.keys() == two.keys()
    for item, score in one.items():
        assert two[item] == pytest.approx(score, rel=1e-9)


BAD_PAYLOADS: list[tuple[bytes, RejectReason]] = [
    (b"{not json", RejectReason.MALFORMED_JSON),
    (b"[1, 2]", RejectReason.NOT_AN_OBJECT),
    (b'{"type": "click", "session_id": "s", "ts": 1400000000000}', RejectReason.MISSING_FIELD),
    (
        b'{"event_id": 5, "type": "click", "session_id": "s", "ts": 1400000000000, "item_id": "i"}',
        RejectReason.WRONG_TYPE,
    ),
    (b'{"event_id": "e", "type": "click", "session_id": "s", "ts": 5, "item_id": "i"}',
     RejectReason.TS_OUT_OF_RANGE),
    (b'{"event_id": "e", "type": "view", "session_id": "s", "ts": 1400000000000}',
     RejectReason.UNKNOWN_TYPE),
    (b'{"pad": "' + b"x" * 5000 + b'"}', RejectReason.OVERSIZED),
]  # fmt: skip


def test_features_match_reference_and_duplicates_and_bad_events_change_nothing(
    settings: Settings,
) -> None:
    events = sample_events(12_000)
    clean = flow_settings(settings, "clean")
    produce_events(clean, events)
    run_flow_in_process(clean)
    clean_state = read_state(clean)
    assert decoded(clean_state) == reference_features(events)
    client = redis.Redis.from_url(clean.redis.redis_url.get_secret_value())
    categories = client.hgetall(RedisKeys(clean.redis.key_prefix).item_categories)
    clicked = {e.item_id: e.category for e in events if e.type == "click" and e.category}
    assert {k.decode(): v.decode() for k, v in categories.items()}.keys() == clicked.keys()

    noisy = flow_settings(settings, "noisy")
    topics = Topics.from_settings(noisy.kafka)
    producer = make_producer(noisy.kafka)
    bad_sent: Counter[RejectReason] = Counter()
    for index, event in enumerate(events):
        payload = encode_event(event)
        topic = topics.for_event_type(event.type)
        producer.produce(topic, payload, event.session_id.encode())
        if index % 5 == 0:  # a producer retry / replay: the same event again, later
            producer.produce(topic, payload, event.session_id.encode())
        if index % 400 == 0:
            raw, reason = BAD_PAYLOADS[(index // 400) % len(BAD_PAYLOADS)]
            producer.produce(topics.clicks if index % 800 else topics.purchases, raw, b"bad")
            bad_sent[reason] += 1
        producer.poll(0)
    assert producer.flush(30) == 0
    run_flow_in_process(noisy)

    assert read_state(noisy) == clean_state
    assert_popular_close(read_popular(noisy), read_popular(clean))
    letters = [
        decode_dead_letter(m.value(), m.key())
        for m in read_topic(noisy.kafka, topics.events_dlq, sum(bad_sent.values()))
    ]
    assert Counter(letter.reason for letter in letters) == bad_sent
    assert {letter.raw for letter in letters} <= {raw for raw, _ in BAD_PAYLOADS}
    assert all(letter.topic in (topics.clicks, topics.purchases) for letter in letters)
    expected_ids = expected_example_ids(events)
    clean_examples = example_ids(clean, expected_ids)
    noisy_examples = example_ids(noisy, expected_ids)
    assert clean_examples.keys() == noisy_examples.keys() == expected_ids
    assert max(noisy_examples.values()) == 1, "a duplicate event made a second example"


def test_two_processes_write_the_same_state_as_one(settings: Settings, tmp_path: Path) -> None:
    events = sample_events(15_000)
    one = flow_settings(settings, "one", stop_at_end=True)
    produce_events(one, events)
    single = flow_process(one, log=tmp_path / "one.log")
    assert single.wait(FLOW_TIMEOUT_S) == 0, (tmp_path / "one.log").read_text()[-2000:]

    two = flow_settings(settings, "two", stop_at_end=True, publish_partitions=2)
    two = two.model_copy(update={"kafka": one.kafka})  # same topics, own keys and recovery
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    procs = [
        flow_process(two, "-i", str(index), "-a", addresses, log=tmp_path / f"two-{index}.log")
        for index in range(2)
    ]
    for index, proc in enumerate(procs):
        assert proc.wait(FLOW_TIMEOUT_S) == 0, (tmp_path / f"two-{index}.log").read_text()[-2000:]

    one_state = read_state(one)
    assert len(one_state) > 1000
    assert read_state(two) == one_state
    assert decoded(one_state) == reference_features(events)
    assert_popular_close(read_popular(two), read_popular(one))
