"""The online learner on the real broker and Redis."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from online_models.learner.loop import Learner, PublishRecord
from online_models.model.recommender import random_weights
from online_models.model.weights import ModelWeights
from online_models.registry.weight_registry import WeightRegistry
from streamrec.kafka_clients import make_producer
from streamrec.redis_keys import RedisKeys
from streamrec.settings import LearnerSettings, Settings
from streamrec.topics import Topics
from streamrec.training_examples import TrainingExample, encode_example
from tests.conftest import tiny_model
from tests.kafka_reading import read_topic

pytestmark = pytest.mark.integration


def small_settings(settings: Settings, **learner: object) -> Settings:
    """Tiny model, frequent publishing: many versions from few examples."""
    model = tiny_model(settings, initial_items=16, keep_snapshots=1000)
    options = {
        "batch_size": 32, "batch_ms": 20, "publish_every_steps": 2, "publish_every_s": 60.0,
        "snapshot_every": 3, "sampled_negatives": 8, "metrics_port": 0, "lr": 0.01,
    } | learner  # fmt: skip
    return settings.model_copy(
        update={
            "model": model,
            "learner": LearnerSettings(consumer_group=settings.learner.consumer_group, **options),
        }
    )


def make_examples(count: int, seed: int = 0, items: int = 60) -> list[TrainingExample]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        history = tuple(f"i{rng.randrange(items)}" for _ in range(rng.randint(1, 6)))
        out.append(
            TrainingExample(
                example_id=f"e{seed}-{i}",
                session_id=f"s{i % 40}",
                history=history,
                target_item=f"i{rng.randrange(items)}",
                ts=1_700_000_000_000 + i,
                source_topic="clicks",
                source_partition=0,
                source_offset=i,
            )  # fmt: skip
        )
    return out


def produce(settings: Settings, examples: list[TrainingExample]) -> None:
    producer = make_producer(settings.kafka)
    topic = Topics.from_settings(settings.kafka).training_examples
    for example in examples:
        producer.produce(topic, encode_example(example), key=example.session_id.encode())
    assert producer.flush(10) == 0


def learn_until(learner: Learner, total: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(learner.positions.values()) < total and time.monotonic() < deadline:
        learner.run_once()
    learner.publish_if_pending()
    assert sum(learner.positions.values()) == total


def assert_same_weights(a: ModelWeights, b: ModelWeights) -> None:
    assert a.item_ids == b.item_ids
    assert set(a.tensors) == set(b.tensors)
    for name in a.tensors:
        np.testing.assert_array_equal(a.tensors[name], b.tensors[name], err_msg=name)


def test_published_deltas_applied_to_the_snapshot_equal_the_learner_weights(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = small_settings(settings)
    produce(config, make_examples(400))
    learner = Learner(config, redis_client, CollectorRegistry())
    expected: dict[int, ModelWeights] = {}

    def remember(record: PublishRecord) -> None:
        assert learner.head is not None
        expected[record.version] = learner.head.weights()

    learner.on_publish = remember
    learner.start()
    try:
        learn_until(learner, 400)
    finally:
        learner.close()
    registry = WeightRegistry(config, redis_client)
    kinds = [info.kind for info in registry.versions()]
    assert "delta" in kinds and kinds.count("snapshot") >= 2  # bootstrap + periodic
    for version, weights in expected.items():
        loaded = registry.load(version)
        assert loaded.version == version
        assert_same_weights(loaded, weights)
    final = registry.info(registry.current_version())
    assert final.examples_seen == 400
    assert sum(final.offsets.values()) == 400
    signals = redis_client.xrange(RedisKeys(config.redis.key_prefix).learner_signals)
    assert sum(int(fields[b"examples"]) for _, fields in signals) == 400
    assert {b"model_version", b"hits_at_20", b"mrr_sum", b"mean_loss", b"first_offset"} <= set(
        signals[0][1]
    )


def test_a_nan_batch_is_skipped_counted_and_alerted(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = small_settings(settings)
    produce(config, make_examples(64))
    learner = Learner(config, redis_client, CollectorRegistry())
    learner.start()
    try:
        learn_until(learner, 64)
        assert learner.head is not None
        before = learner.head.weights()
        poisoned = [e._replace(weight=math.nan) for e in make_examples(8, seed=1)]
        outcome = learner.learn(poisoned)
        assert outcome.skipped == "non_finite_loss"
        assert learner.skipped == 1
        after = learner.head.weights()
        for name in before.tensors:  # new items may appear, trained rows must not move
            rows = before.tensors[name].shape[0]
            np.testing.assert_array_equal(after.tensors[name][:rows], before.tensors[name])
    finally:
        learner.close()
    alerts = read_topic(config.kafka, Topics.from_settings(config.kafka).alerts, 1, 20)
    assert len(alerts) == 1
    alert = orjson.loads(alerts[0].value())
    assert alert["detector"] == "learner_guard" and alert["signal"] == "non_finite_loss"
    stream = redis_client.xrange(RedisKeys(config.redis.key_prefix).alerts)
    assert [orjson.loads(f[b"alert"])["alert_id"] for _, f in stream] == [alert["alert_id"]]


def test_an_externally_promoted_version_is_adopted(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = small_settings(settings)
    produce(config, make_examples(100))
    learner = Learner(config, redis_client, CollectorRegistry())
    learner.start()
    try:
        learn_until(learner, 100)
        registry = WeightRegistry(config, redis_client)
        promoted = registry.publish_snapshot(
            random_weights(70, config.model, seed=3), source="finetune"
        ).version
        produce(config, make_examples(50, seed=2))
        learn_until(learner, 150)
        assert learner.head is not None
        info = registry.info(registry.current_version())
        lineage = registry.load_info_chain(info.version)
        assert info.source == "learner" and lineage[0].version >= promoted
        assert "item-5" in learner.head.index  # learned on top of the promoted weights
    finally:
        learner.close()


def duplicates_dropped(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("streamrec_learner_duplicate_examples_total") or 0.0


def test_repeated_examples_are_learned_once_even_across_a_restart(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = small_settings(settings)
    examples = make_examples(200, seed=4)
    produce(config, examples)
    produce(config, examples)  # the flow, killed, emitted every example again
    metrics = CollectorRegistry()
    first = Learner(config, redis_client, metrics)
    first.start()
    try:
        learn_until(first, 400)
    finally:
        first.close()
    assert first.examples_seen == 200
    assert duplicates_dropped(metrics) == 200
    # Some come a third time, after the learner restarted, among new examples.
    produce(config, [*examples[:50], *make_examples(100, seed=5), *examples[150:170]])
    metrics = CollectorRegistry()
    second = Learner(config, redis_client, metrics)
    second.start()
    try:
        learn_until(second, 570)
    finally:
        second.close()
    assert duplicates_dropped(metrics) == 70
    registry = WeightRegistry(config, redis_client)
    final = registry.info(registry.current_version())
    assert final is not None and final.examples_seen == 300  # the distinct examples
    assert sum(final.offsets.values()) == 570  # every record read, repeats included
