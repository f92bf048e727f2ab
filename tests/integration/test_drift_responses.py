"""The drift monitor's automatic responses through its real loop: a promoted fine-tune that
does worse live is rolled back (guarded roll-out); a fine-tune whose drop the learner healed
by itself meanwhile is not started."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis
from prometheus_client import CollectorRegistry

from online_models.alerts.tail import latest_alerts
from online_models.drift.loop import DriftLoop
from online_models.finetune.status import record_finetune
from online_models.model.recommender import random_weights
from online_models.registry.weight_registry import WeightRegistry
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings
from tests.conftest import tiny_model

pytestmark = pytest.mark.integration


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def add_signals(client: redis.Redis, keys: RedisKeys, version: int, hits: int, count: int) -> None:
    for _ in range(count):
        client.xadd(keys.learner_signals, {
            "model_version": version, "examples": 100, "hits_at_20": hits, "mrr_sum": 0.0,
            "mean_loss": 6.0, "first_offset": 0, "last_offset": 99,
            "ts_ms": int(time.time() * 1000),
        })  # fmt: skip


def test_a_promotion_that_does_worse_live_is_rolled_back(
    settings: Settings, redis_client: redis.Redis
) -> None:
    drift = settings.drift.model_copy(
        update={"recovery_window": 300, "promotion_margin": 0.05, "finetune_enabled": False}
    )
    config = settings.model_copy(update={"model": tiny_model(settings), "drift": drift})
    keys = RedisKeys(config.redis.key_prefix)
    registry = WeightRegistry(config, redis_client)
    before = registry.publish_snapshot(random_weights(30, config.model, seed=1), source="train")
    loop = DriftLoop(config, redis_client, CollectorRegistry())
    stop = threading.Event()
    runner = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    runner.start()
    try:
        add_signals(redis_client, keys, before.version, hits=45, count=20)
        wait_until(lambda: loop.monitor.signal_examples == 2000, "signals of the old lineage")
        promoted = registry.publish_snapshot(
            random_weights(30, config.model, seed=2), source="finetune:ft-1"
        )
        record_finetune(redis_client, keys, {
            "finetune_id": "ft-1", "finetune_verdict": "promoted",
            "finetune_candidate_version": str(promoted.version),
            "previous_current": str(before.version), "finetune_finished_ms": "1",
        })  # fmt: skip
        wait_until(lambda: loop.monitor.promotion.watching, "the watch of the promotion")
        add_signals(redis_client, keys, promoted.version, hits=20, count=4)
        wait_until(lambda: (registry.current_version() or 0) > promoted.version, "the restore", 60)
    finally:
        stop.set()
        runner.join(30)
    restored = registry.info(registry.current_version())
    assert restored.source == f"rollback:v{before.version}"
    alerts = {alert.detector: alert for _, alert in latest_alerts(redis_client, keys.alerts, 20)}
    regressed = alerts["promotion_regressed"]
    assert regressed.model_version == promoted.version
    assert regressed.level_before == pytest.approx(0.45) and regressed.level_after < 0.25
    assert f"promoted v{promoted.version} ranks" in alerts["rollback"].message


def test_a_finetune_is_skipped_when_the_learner_healed_while_it_waited(
    settings: Settings, redis_client: redis.Redis
) -> None:
    drift = settings.drift.model_copy(
        update={"finetune_wait_examples": 10**9, "finetune_wait_s": 3.0, "warmup_examples": 500}
    )
    config = settings.model_copy(update={"model": tiny_model(settings), "drift": drift})
    keys = RedisKeys(config.redis.key_prefix)
    registry = WeightRegistry(config, redis_client)
    version = registry.publish_snapshot(
        random_weights(30, config.model, seed=1), source="train"
    ).version
    loop = DriftLoop(config, redis_client, CollectorRegistry())
    stop = threading.Event()
    runner = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    runner.start()
    try:
        add_signals(redis_client, keys, version, hits=45, count=100)
        add_signals(redis_client, keys, version, hits=5, count=6)
        wait_until(lambda: loop.schedule.pending is not None, "a fine-tune scheduled by the drop")
        add_signals(redis_client, keys, version, hits=46, count=60)  # healed meanwhile
        wait_until(lambda: loop.schedule.pending is None, "the fine-tune's turn")
    finally:
        stop.set()
        runner.join(30)
    alerts = [alert for _, alert in latest_alerts(redis_client, keys.alerts, 50)]
    assert [a.detector for a in alerts] == ["hit_rate", "finetune_skipped"]
    drop, skipped = alerts
    assert drop.alert_id in skipped.message and "recovered by itself" in skipped.message
    assert loop.finetune is None and redis_client.get(keys.finetune_lock) is None
