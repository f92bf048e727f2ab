"""The drift monitor and the fine-tune's replay count a repeated example once (real broker).

(The learner's side: ``test_learner.py`` and ``tests/faults/test_learner_duplicates.py``.)
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from online_models.drift.loop import DriftLoop
from online_models.finetune.replay import read_replay
from streamrec.settings import Settings
from streamrec.topics import Topics
from tests.integration.test_learner import make_examples, produce

pytestmark = pytest.mark.integration


def test_the_replay_buffer_holds_each_example_once(settings: Settings) -> None:
    examples = make_examples(120, seed=41)
    produce(settings, examples)
    produce(settings, [*examples[:80], *examples[100:110]])  # the flow emitted them again
    topic = Topics.from_settings(settings.kafka).training_examples
    replay = read_replay(settings.kafka, topic, 1000, idle_s=0.5, repeat_window=500)
    assert sorted(e.example_id for e in replay) == sorted(e.example_id for e in examples)


def committed_records(settings: Settings, group: str) -> int:
    topic = Topics.from_settings(settings.kafka).training_examples
    consumer = Consumer(settings.kafka.client_config() | {"group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], 10)
        return sum(max(tp.offset, 0) for tp in committed)
    finally:
        consumer.close()


def observe_until_read(loop: DriftLoop, settings: Settings, records: int) -> None:
    """Run the monitor until its group has committed ``records`` examples' offsets."""
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    try:
        group = settings.drift.consumer_group
        while committed_records(settings, group) < records and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
    assert committed_records(settings, settings.drift.consumer_group) == records


def test_the_drift_monitor_observes_each_example_once_across_a_restart(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = settings.model_copy(
        update={
            "drift": settings.drift.model_copy(
                update={"finetune_enabled": False, "metrics_port": 0}
            )
        }
    )
    examples = make_examples(150, seed=42)
    produce(config, examples)
    produce(config, examples[:100])
    first = DriftLoop(config, redis_client, CollectorRegistry())
    observe_until_read(first, config, 250)
    assert first.monitor.examples_seen == 150
    produce(config, [*examples[120:150], *make_examples(40, seed=43)])  # a third copy
    second = DriftLoop(config, redis_client, CollectorRegistry())
    observe_until_read(second, config, 320)
    assert second.monitor.examples_seen == 40  # only the new ones: the window was rebuilt
