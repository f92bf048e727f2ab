"""Redis restarts empty under a trained lineage: the learner continues from the trained
weights, version numbers and files never collide (a private redis-server, the real CLI)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from online_models.learner.loop import Learner
from online_models.registry.weight_registry import WeightRegistry
from streamrec.settings import RedisSettings, Settings
from tests.faults.test_learner_restart import start_learner
from tests.integration.test_learner import learn_until, make_examples, produce, small_settings
from tests.private_services import PrivateRedis

pytestmark = pytest.mark.faults


def digests(store: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.iterdir()}


def run_learner_until_idle(config: Settings, log: Path) -> None:
    learner = start_learner(config, log, "--idle-exit-s", "3")
    assert learner.wait(120) == 0, log.read_text()[-2000:]


def test_the_learner_continues_its_trained_lineage_after_redis_restarted_empty(
    settings: Settings, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    config = small_settings(
        settings.model_copy(update={"redis": RedisSettings(redis_url=private_redis.url)}),
        batch_size=16, publish_every_steps=1, snapshot_every=4,
    )  # fmt: skip
    store = Path(config.model.store_dir)
    log = tmp_path / "learner.log"
    produce(config, make_examples(300, seed=31))
    run_learner_until_idle(config, log)
    client = redis.Redis.from_url(private_redis.url)
    registry = WeightRegistry(config, client)
    trained = registry.load()
    trained_info = registry.info(trained.version)
    assert trained_info.examples_seen == 300
    before = digests(store)

    private_redis.restart_empty()  # Redis loses everything: pointer, metadata, version counter
    client = redis.Redis.from_url(private_redis.url)
    registry = WeightRegistry(config, client)
    assert registry.current_version() is None

    produce(config, make_examples(100, seed=32))
    run_learner_until_idle(config, log)
    assert "learner_bootstrapped" not in log.read_text().split("model_lineage_recovered")[-1]
    final = registry.info(registry.current_version())
    assert final.version > trained.version  # no number handed out twice
    assert final.examples_seen == 400  # the count goes on: it continued, not restarted
    first_after = min(
        (i for i in registry.versions() if i.version > trained.version), key=lambda i: i.version
    )
    assert first_after.parent == trained.version  # built on the trained weights
    again = registry.load(trained.version)  # the trained version itself, unchanged
    assert again.item_ids == trained.item_ids
    np.testing.assert_array_equal(
        again.tensors["head.item_table"], trained.tensors["head.item_table"]
    )
    after = digests(store)
    kept = before.keys() & after.keys()  # the learner prunes old snapshots as usual
    assert {name: after[name] for name in kept} == {name: before[name] for name in kept}
    assert trained_info.file in kept  # no file was overwritten, the trained one is there


def test_a_running_learner_puts_the_lineage_back_when_redis_lost_it(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = small_settings(settings)
    registry = WeightRegistry(config, redis_client)
    produce(config, make_examples(96, seed=33))
    learner = Learner(config, redis_client, CollectorRegistry())
    learner.start()
    try:
        learn_until(learner, 96)
        last = registry.current_version()
        before = digests(Path(config.model.store_dir))
        keys = list(redis_client.scan_iter(f"{config.redis.key_prefix}:*"))
        redis_client.delete(*keys)  # failover to an empty replica: the keys are gone
        produce(config, make_examples(64, seed=34))
        learn_until(learner, 160)
    finally:
        learner.close()
    current = registry.info(registry.current_version())
    assert current.version > last and current.examples_seen == 160
    assert registry.info(last) is not None  # the lineage is registered again
    after = digests(Path(config.model.store_dir))
    assert {name: after[name] for name in before} == before
