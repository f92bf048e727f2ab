"""Where a fine-tune's candidate starts: the version that had learned no held-out example.

The learner's signals (written here as the learner writes them) say which version ranked
the first held-out batch; the job starts the candidate from it, and when it cannot (no
signal reaches the span, or that version was pruned) it starts from the current weights
and says so in its report, status and alert.
"""

from __future__ import annotations

import pytest
import redis

from online_models.alerts.tail import latest_alerts
from online_models.finetune.gate import split_replay
from online_models.finetune.job import FinetuneReport, FinetuneRequest, run_finetune
from online_models.finetune.status import read_status
from online_models.learner.signal import LearnerSignal
from online_models.model.recommender import random_weights
from online_models.registry.weight_registry import WeightRegistry
from streamrec.kafka_clients import make_producer
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings, TrainSettings
from streamrec.topics import Topics
from streamrec.training_examples import TrainingExample, encode_example
from tests.conftest import tiny_model

pytestmark = pytest.mark.integration

REPLAY = 500


def finetune_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "model": tiny_model(settings),
            "train": TrainSettings(epochs=1, batch_size=128),
            "drift": settings.drift.model_copy(
                update={"replay_examples": REPLAY, "finetune_min_holdout": 50}
            ),
        }
    )


def produce_examples(settings: Settings) -> int:
    """A learnable stream (each item followed by the next) on the topic; the event time of
    its first held-out example."""
    examples = [
        TrainingExample(f"e{n}", f"s{n}", (f"item-{n % 100}",), f"item-{(n + 1) % 100}", ts)
        for n, ts in enumerate(range(1_700_000_000_000, 1_700_000_000_000 + REPLAY))
    ]
    producer = make_producer(settings.kafka)
    topic = Topics.from_settings(settings.kafka).training_examples
    for example in examples:
        producer.produce(topic, encode_example(example), key=example.session_id.encode())
    assert producer.flush(10) == 0
    _, holdout = split_replay(examples, settings.drift.finetune_holdout_fraction)
    return holdout[0].ts


def write_signals(client: redis.Redis, keys: RedisKeys, batches: list[tuple[int, int]]) -> None:
    """The learner's signal stream: one entry per (newest example's event time, version)."""
    for offset, (event_ts_ms, version) in enumerate(batches):
        signal = LearnerSignal(
            version, 64, 20, 10.0, 1.0, offset * 64, offset * 64 + 63, event_ts_ms, event_ts_ms
        )
        client.xadd(keys.learner_signals, signal.fields())  # type: ignore[arg-type]


def publish_versions(settings: Settings, client: redis.Redis, count: int) -> list[int]:
    """``count`` snapshots in order, the last one current."""
    registry = WeightRegistry(settings, client)
    return [
        registry.publish_snapshot(random_weights(100, settings.model, seed), source="t").version
        for seed in range(count)
    ]


def finetune(settings: Settings, client: redis.Redis) -> FinetuneReport:
    report = run_finetune(settings, client, FinetuneRequest("manual", REPLAY))
    assert report.verdict in ("promoted", "rejected"), report.reason
    return report


def test_the_candidate_starts_from_the_version_that_ranked_the_first_held_out_batch(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = finetune_settings(settings)
    keys = RedisKeys(config.redis.key_prefix)
    before, unseen, current = publish_versions(config, redis_client, 3)
    first_ts = produce_examples(config)
    write_signals(
        redis_client,
        keys,
        [
            (first_ts - 300, before),
            (first_ts - 1, before),  # the last batch before the span
            (first_ts + 5, unseen),  # the first to reach it: ranked by `unseen`
            (first_ts + 40, current),  # `current` had learned the span's start
            (first_ts + 90, current),
        ],
    )

    report = finetune(config, redis_client)

    assert report.base_version == unseen and report.base_fallback == ""
    assert "current weights" not in report.reason


@pytest.mark.parametrize(
    ("signals", "pruned", "said"),
    [
        (False, False, "no learner signal reaches the held-out span"),
        (True, True, "no longer loads"),
    ],
    ids=["no-signal", "version-pruned"],
)
def test_without_the_unseen_version_the_candidate_starts_from_the_current_one_and_says_so(
    settings: Settings, redis_client: redis.Redis, signals: bool, pruned: bool, said: str
) -> None:
    config = finetune_settings(settings)
    keys = RedisKeys(config.redis.key_prefix)
    _, unseen, current = publish_versions(config, redis_client, 3)
    if pruned:
        assert unseen in WeightRegistry(config, redis_client).prune(keep_snapshots=1)
    first_ts = produce_examples(config)
    if signals:
        write_signals(redis_client, keys, [(first_ts + 5, unseen), (first_ts + 90, current)])

    report = finetune(config, redis_client)

    expected = "version_not_loadable" if pruned else "no_learner_signal"
    assert report.base_version == current and report.base_fallback == expected
    assert said in report.reason and "current weights" in report.reason
    if pruned:
        assert f"version {unseen}" in report.reason
    assert said in read_status(redis_client, keys)["finetune_reason"]
    (alert,) = [a for _, a in latest_alerts(redis_client, keys.alerts, 10)]
    assert said in alert.message
