"""The memory-only broker restarts empty under a running learner: it learns the new examples.

Before: the learner waited at its old offsets of ``training-examples``, beyond the end of
the emptied partitions, and never learned or published again. It now reads each emptied
partition again from its beginning and raises one ``topic_reset`` alert per partition.
The broker is the test's own (the session-wide one is never restarted); Redis is the
shared one, under the test's key prefix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
import redis
from prometheus_client import CollectorRegistry

from online_models.alerts.tail import latest_alerts
from online_models.learner.alerts import TOPIC_RESET_DETECTOR
from online_models.learner.loop import Learner
from online_models.registry.weight_registry import WeightRegistry
from streamrec.alerts import decode_alert
from streamrec.kafka_clients import ensure_topics
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings
from streamrec.topics import Topics
from tests.integration.test_learner import learn_until, make_examples, produce, small_settings
from tests.kafka_reading import read_topic
from tests.private_services import PrivateBroker

pytestmark = pytest.mark.faults

OLD, NEW = 192, 64  # fewer new than old examples on each partition: each one ends earlier
LEARN_TIMEOUT_S = 20.0


def learn_while(learner: Learner, pending: Callable[[], bool]) -> None:
    """Drive ``learner`` until ``pending()`` is false, failing at the deadline."""
    deadline = time.monotonic() + LEARN_TIMEOUT_S
    while pending():
        assert time.monotonic() < deadline, (
            f"stuck: read up to {learner.positions}, learned {learner.examples_seen}"
        )
        learner.run_once()


def test_after_the_broker_restarts_empty_the_learner_learns_and_publishes_the_new_examples(
    settings: Settings,
    private_broker: PrivateBroker,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="streamrec.alerts")
    config = small_settings(private_broker.attach(settings))
    topics = Topics.from_settings(config.kafka)
    ensure_topics(config.kafka, topics.all())
    registry = WeightRegistry(config, redis_client)
    produce(config, make_examples(OLD, seed=41))
    learner = Learner(config, redis_client, CollectorRegistry())
    learner.start()
    try:
        learn_until(learner, OLD)
        before = registry.info(registry.current_version())
        assert before is not None and before.examples_seen == OLD
        read = {p: offset for p, offset in learner.positions.items() if offset > 0}

        private_broker.restart_empty()
        ensure_topics(config.kafka, topics.all())
        produce(config, make_examples(NEW, seed=42))  # new example ids: not repeats
        learn_while(learner, lambda: learner.examples_seen < OLD + NEW)
        learner.publish_if_pending()
        after = registry.info(registry.current_version())
    finally:
        learner.close()

    assert after is not None and after.version > before.version
    assert after.examples_seen == OLD + NEW
    assert sum(learner.positions.values()) == NEW  # the new topic, read from its beginning
    records = read_topic(config.kafka, topics.alerts, len(read) + 1, timeout_s=3)
    alerts = [decode_alert(record.value()) for record in records]
    assert {a.detector for a in alerts} == {TOPIC_RESET_DETECTOR}
    assert sorted(a.offsets[0].partition for a in alerts) == sorted(read)
    for alert in alerts:
        partition = alert.offsets[0].partition
        assert alert.offsets[0].topic == topics.training_examples
        assert alert.level_before == read[partition]  # where the learner was
        assert alert.level_after < read[partition]  # where the emptied partition ended
        assert (alert.position, alert.model_version) == (OLD, before.version)
    logged = [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "alert"]
    resets = [f["alert_id"] for f in logged if f["detector"] == TOPIC_RESET_DETECTOR]
    assert sorted(resets) == sorted(a.alert_id for a in alerts)
    streamed = latest_alerts(redis_client, RedisKeys(config.redis.key_prefix).alerts, 20)
    assert sorted(a.alert_id for _, a in streamed) == sorted(resets)  # on-call sees them too
