"""Learner knobs fitted on a shop's warm-up travel with the model and reach the learner."""

from __future__ import annotations

import pytest
import redis
from prometheus_client import CollectorRegistry

from online_models.learner.loop import Learner
from online_models.model.recommender import random_weights
from online_models.registry.weight_registry import WeightRegistry
from streamrec.settings import Settings
from tests.integration.test_learner import learn_until, make_examples, produce, small_settings

pytestmark = pytest.mark.integration

FITTED = {"learner.row_lr": 0.5, "learner.sampled_negatives": 16.0}


def started_learner(config: Settings, client: redis.Redis) -> Learner:
    learner = Learner(config, client, CollectorRegistry())
    learner.start()
    return learner


def test_the_learner_uses_fitted_knobs_and_carries_them_to_its_own_versions(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = small_settings(settings)  # sets sampled_negatives explicitly, not row_lr
    registry = WeightRegistry(config, redis_client)
    registry.publish_snapshot(
        random_weights(20, config.model), source="train", metrics={"hr@20": 0.3, **FITTED}
    )
    produce(config, make_examples(96))
    learner = started_learner(config, redis_client)
    try:
        assert learner.head is not None
        assert learner.head.settings.row_lr == 0.5  # fitted: nothing set explicitly
        assert learner.head.settings.sampled_negatives == 8  # explicit setting wins
        learn_until(learner, 96)
    finally:
        learner.close()
    own = registry.info(registry.current_version())
    assert own is not None and own.source == "learner"
    assert own.metrics == FITTED
    restarted = started_learner(config, redis_client)  # from its own version
    try:
        assert restarted.head is not None and restarted.head.settings.row_lr == 0.5
    finally:
        restarted.close()
