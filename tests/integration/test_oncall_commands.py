"""On-call commands against the real Redis, broker and serving app.

``model rollback`` serves a previous version's weights again and serving picks them up (as a
new version number: followers only move forward); ``model status``
and ``alerts tail`` show what happened. The commands run as the real CLI, configured
through the environment like in production.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
from starlette.testclient import TestClient

from online_models.model.recommender import random_weights
from online_models.model.weights import ModelWeights
from online_models.registry.weight_registry import WeightRegistry
from serving.app import create_app
from streamrec.settings import ServingSettings, Settings
from tests.conftest import tiny_model

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def streamrec(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "STREAMREC_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "STREAMREC_TOPIC_PREFIX": settings.kafka.topic_prefix,
        "STREAMREC_REDIS_URL": settings.redis.redis_url.get_secret_value(),
        "STREAMREC_KEY_PREFIX": settings.redis.key_prefix,
        "STREAMREC_MODEL_STORE_DIR": str(settings.model.store_dir),
        "STREAMREC_STATE_DIR": str(settings.state_dir),
        "STREAMREC_LOG_LEVEL": "WARNING",
    }
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip


def assert_same_weights(a: ModelWeights, b: ModelWeights) -> None:
    assert a.item_ids == b.item_ids and set(a.tensors) == set(b.tensors)
    for name, values in a.tensors.items():
        np.testing.assert_array_equal(values, b.tensors[name], err_msg=name)


def served_version(client: TestClient) -> int | None:
    return client.get("/model").json()["version"]


def test_rollback_restores_the_previous_version_and_serving_follows(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = settings.model_copy(
        update={
            "model": tiny_model(settings),
            "serving": ServingSettings(poll_interval_s=30.0),  # pub/sub must do it
        }
    )  # fmt: skip
    registry = WeightRegistry(config, redis_client)
    first = registry.publish_snapshot(random_weights(40, config.model, seed=1), source="train")
    second = registry.publish_snapshot(random_weights(40, config.model, seed=2), source="train")
    with TestClient(create_app(config)) as client:
        deadline = time.monotonic() + 30
        while served_version(client) != second.version and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served_version(client) == second.version

        done = streamrec(config, "model", "rollback")

        assert done.returncode == 0, done.stderr
        report = orjson.loads(done.stdout)
        assert report["rolled_back_from"] == second.version
        assert report["restored_version"] == first.version
        restored = report["current_version"]
        assert registry.current_version() == restored
        info = registry.info(restored)
        assert info.source == f"rollback:v{first.version}" and info.parent == first.version
        assert_same_weights(registry.load(restored), registry.load(first.version))
        deadline = time.monotonic() + 10
        while served_version(client) != restored and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served_version(client) == restored

    status = streamrec(config, "model", "status", "--json")
    assert status.returncode == 0, status.stderr
    shown = orjson.loads(status.stdout)
    assert shown["current_version"] == restored and shown["current_age_s"] >= 0
    assert shown["current_source"] == f"rollback:v{first.version}"

    tail = streamrec(config, "alerts", "tail", "--json", "-n", "5")
    assert tail.returncode == 0, tail.stderr
    (alert,) = [orjson.loads(line) for line in tail.stdout.splitlines()]
    assert alert["detector"] == "rollback" and alert["model_version"] == restored
    assert alert["runbook"] == "docs/runbook.md#model-rollback"


def test_rollback_to_an_unknown_version_is_refused(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    only = registry.publish_snapshot(random_weights(10, settings.model, seed=1), source="train")
    refused = streamrec(settings, "model", "rollback", "999")
    assert refused.returncode == 2
    assert registry.current_version() == only.version
