"""A fine-tune that cannot help is rejected with an alert; the old model keeps serving."""

from __future__ import annotations

import random

import pytest
import redis

from online_models.alerts.tail import latest_alerts
from online_models.finetune.job import FinetuneRequest, run_finetune
from online_models.finetune.status import read_status
from online_models.model.recommender import random_weights
from online_models.registry.weight_registry import WeightRegistry
from streamrec.kafka_clients import make_producer
from streamrec.redis_keys import RedisKeys
from streamrec.settings import DriftSettings, Settings, TrainSettings
from streamrec.topics import Topics
from streamrec.training_examples import TrainingExample, encode_example
from tests.conftest import tiny_model

pytestmark = pytest.mark.integration


def noise_examples(count: int, items: int) -> list[TrainingExample]:
    """Targets drawn uniformly from many items: nothing a model can learn."""
    rng = random.Random(3)
    return [
        TrainingExample(
            f"n{i}",
            f"s{i % 97}",
            (f"i{rng.randrange(items)}",),
            f"i{rng.randrange(items)}",
            1_700_000_000_000 + i,
            source_topic="clicks",
            source_partition=0,
            source_offset=i,
        )  # fmt: skip
        for i in range(count)
    ]


def test_a_finetune_that_cannot_beat_serving_is_rejected_and_serving_stays(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = settings.model_copy(
        update={
            "model": tiny_model(settings),
            "train": TrainSettings(epochs=2, batch_size=128),
            "drift": DriftSettings(
                consumer_group=settings.drift.consumer_group,
                finetune_margin=0.05, replay_examples=1200, finetune_min_holdout=100,
                finetune_cooldown_s=120, metrics_port=0,
            ),
        }
    )  # fmt: skip
    keys = RedisKeys(config.redis.key_prefix)
    registry = WeightRegistry(config, redis_client)
    serving = registry.publish_snapshot(random_weights(50, config.model, seed=1), source="train")
    producer = make_producer(config.kafka)
    topic = Topics.from_settings(config.kafka).training_examples
    for example in noise_examples(1500, items=3000):
        producer.produce(topic, encode_example(example), key=example.session_id.encode())
    assert producer.flush(10) == 0

    report = run_finetune(config, redis_client, FinetuneRequest("manual", 1200))

    assert report.verdict == "rejected", report.reason
    assert report.train_examples + report.holdout_examples == 1200
    assert "does not beat" in report.reason
    assert registry.current_version() == serving.version
    (alert,) = [a for _, a in latest_alerts(redis_client, keys.alerts, 10)]
    assert alert.detector == "finetune_rejected" and alert.model_version == serving.version
    assert alert.runbook.endswith("#fine-tune-rejected") and "does not beat" in alert.message
    status = read_status(redis_client, keys)
    assert status["finetune_verdict"] == "rejected" and status["finetune_trigger"] == "manual"
    assert 0 < redis_client.pttl(keys.finetune_lock) <= 120_000  # the cooldown holds the lock
