"""On-call commands against the real Redis, broker and serving app.

``model rollback`` serves a previous version's weights again and serving picks them up (as a
new version number: followers only move forward); ``model status``
and ``alerts tail`` show what happened. ``model canary`` shows a canary roll-out and drops
or promotes it by hand with the same record and alert as the canary watch. The commands run
as the real CLI, configured through the environment like in production.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
from starlette.testclient import TestClient

from online_models.finetune.canary_rollout import (
    drop_canary,
    promote_canary,
    record_canary_counts,
    start_canary,
)
from online_models.finetune.status import read_status
from online_models.model.recommender import random_weights
from online_models.model.weights import ModelWeights
from online_models.registry.weight_registry import WeightRegistry
from serving.app import create_app
from streamrec.redis_keys import RedisKeys
from streamrec.settings import ServingSettings, Settings
from tests.conftest import tiny_model
from tests.process_env import process_env

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def streamrec(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = process_env(settings, STREAMREC_LOG_LEVEL="WARNING")
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


def alerts_tail(settings: Settings) -> list[dict]:
    tail = streamrec(settings, "alerts", "tail", "--json", "-n", "5")
    assert tail.returncode == 0, tail.stderr
    return [orjson.loads(line) for line in tail.stdout.splitlines()]


def test_a_canary_shows_its_counts_and_dropping_it_by_hand_records_a_roll_back(
    settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMREC_EXPERIMENT_ARMS", "online=0.8,canary=0.2")
    keys = RedisKeys(settings.redis.key_prefix)
    registry = WeightRegistry(settings, redis_client)
    control = registry.publish_snapshot(random_weights(10, settings.model, seed=1), source="t")
    candidate = random_weights(10, settings.model, seed=2)
    canary = registry.publish_snapshot(candidate, source="t", make_current=False).version
    start_canary(settings, redis_client, canary, control.version)
    record_canary_counts(redis_client, keys, canary=(40, 4), control=(50, 10))  # as the watch

    shown = streamrec(settings, "model", "canary", "--json")

    assert shown.returncode == 0, shown.stderr
    view = orjson.loads(shown.stdout)
    assert view["running"] and view["verdict"] == "running"
    assert (view["canary_version"], view["control_version"]) == (canary, control.version)
    assert view["arm_share"] == 0.2 and view["started_age_s"] >= 0 and view["deadline_in_s"] > 0
    assert (view["canary_impressions"], view["canary_ctr"]) == (40, 0.1)
    assert (view["control_impressions"], view["control_ctr"]) == (50, 0.2)

    dropped = streamrec(settings, "model", "canary", "--drop", "--reason", "odd carts")

    assert dropped.returncode == 0, dropped.stderr
    assert orjson.loads(dropped.stdout) == {
        "dropped_version": canary, "reason": "by hand: odd carts"
    }  # fmt: skip
    assert registry.canary_version() is None and registry.current_version() == control.version
    status = read_status(redis_client, keys)
    assert (status["canary_verdict"], status["canary_reason"]) == (
        "rolled_back",
        "by hand: odd carts",
    )
    (alert,) = alerts_tail(settings)
    assert alert["detector"] == "canary_rolled_back" and alert["severity"] == "warning"
    assert (alert["level_before"], alert["level_after"], alert["position"]) == (0.2, 0.1, 40)
    assert alert["model_version"] == canary and "by hand: odd carts" in alert["message"]

    # The watch deciding a moment later changes nothing: who ended it first recorded why.
    assert not drop_canary(settings, redis_client, canary, (0.2, 0.1), 40, worse=False, reason="x")
    with pytest.raises(LookupError):
        promote_canary(settings, redis_client, canary, (0.2, 0.1), 40, "not worse")
    assert read_status(redis_client, keys)["canary_verdict"] == "rolled_back"
    assert registry.current_version() == control.version and len(alerts_tail(settings)) == 1

    again = streamrec(settings, "model", "canary", "--drop")
    assert again.returncode == 2
    assert again.stderr.strip() == "error: canary drop refused: no canary is rolled out"
    last = orjson.loads(streamrec(settings, "model", "canary", "--json").stdout)
    assert not last["running"] and (last["canary_version"], last["verdict"]) == (
        canary, "rolled_back"
    )  # fmt: skip


def test_promoting_a_canary_set_by_hand_makes_its_weights_current(
    settings: Settings, redis_client: redis.Redis
) -> None:
    keys = RedisKeys(settings.redis.key_prefix)
    registry = WeightRegistry(settings, redis_client)
    control = registry.publish_snapshot(random_weights(10, settings.model, seed=1), source="t")
    candidate = random_weights(10, settings.model, seed=2)
    canary = registry.publish_snapshot(candidate, source="t", make_current=False).version
    registry.set_canary(canary)  # no watch has seen it: nothing recorded, no counts

    promoted = streamrec(settings, "model", "canary", "--promote")

    assert promoted.returncode == 0, promoted.stderr
    report = orjson.loads(promoted.stdout)
    assert (report["promoted_version"], report["previous_current"]) == (canary, control.version)
    current = report["current_version"]
    assert registry.current_version() == current and registry.canary_version() is None
    assert registry.info(current).source == f"canary:v{canary}"
    assert_same_weights(registry.load(current), registry.load(canary))
    status = read_status(redis_client, keys)
    assert status["canary_version"] == str(canary) and status["canary_verdict"] == "promoted"
    assert status["canary_reason"] == "by hand"
    assert status["previous_current"] == str(control.version)
    (alert,) = alerts_tail(settings)
    assert alert["detector"] == "canary_promoted" and alert["model_version"] == current
    assert alert["level_before"] is None and alert["position"] == 0  # nothing was counted

    refused = streamrec(settings, "model", "canary", "--promote")
    assert refused.returncode == 2 and "no canary is rolled out" in refused.stderr
    assert registry.current_version() == current
