"""A current version that does not load: skipped with one alert, no loop, no orphan file,
never an untrained model over a trained lineage (the learner in-process, real broker and
Redis)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from online_models.learner.loop import Learner
from online_models.learner.version_follower import LearnerStartError
from online_models.model.weights import ITEM_TABLE
from online_models.registry.blobs import encode_snapshot, sha256_hex
from online_models.registry.weight_registry import WeightRegistry
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings
from streamrec.topics import Topics
from tests.faults.test_learner_restart import learner_env
from tests.integration.test_learner import learn_until, make_examples, produce, small_settings
from tests.kafka_reading import read_topic

pytestmark = pytest.mark.faults

TRAINED = 192  # examples in the lineage before the break


def trained_lineage(settings: Settings, client: redis.Redis, snapshot_every: int) -> Settings:
    """A learner's lineage of versions over ``TRAINED`` examples (learner closed)."""
    config = small_settings(settings, snapshot_every=snapshot_every)
    produce(config, make_examples(TRAINED, seed=21))
    learner = Learner(config, client, CollectorRegistry())
    learner.start()
    try:
        learn_until(learner, TRAINED)
    finally:
        learner.close()
    return config


def rewrite_current(config: Settings, client: redis.Redis, blob: bytes) -> int:
    """Replace the current version's blob *and* its recorded sha256 (a forged or damaged
    blob that passes the integrity check); returns the version."""
    registry = WeightRegistry(config, client)
    version = registry.current_version()
    info = registry.info(version)
    (Path(config.model.store_dir) / info.file).write_bytes(blob)
    key = RedisKeys(config.redis.key_prefix).model_version(version)
    client.hset(key, mapping={"sha256": sha256_hex(blob), "size_bytes": len(blob)})
    return version


def current_blob(config: Settings, client: redis.Redis) -> bytes:
    registry = WeightRegistry(config, client)
    info = registry.info(registry.current_version())
    return (Path(config.model.store_dir) / info.file).read_bytes()


def edit_header(blob: bytes, edit: Callable[[dict], None]) -> bytes:
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    edit(header)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + blob[8 + size :]


def truncate_delta(config: Settings, client: redis.Redis) -> int:
    registry = WeightRegistry(config, client)
    info = registry.info(registry.current_version())
    assert info.kind == "delta"
    path = Path(config.model.store_dir) / info.file
    path.write_bytes(path.read_bytes()[: info.size_bytes // 2])
    return info.version


def declare_a_huge_table(config: Settings, client: redis.Redis) -> int:
    def huge(header: dict) -> None:
        begin = header[ITEM_TABLE]["data_offsets"][0]
        header[ITEM_TABLE] = {
            "dtype": "F32", "shape": [10**9, 64], "data_offsets": [begin, begin + 256 * 10**9]
        }  # fmt: skip

    return rewrite_current(config, client, edit_header(current_blob(config, client), huge))


def widen_the_item_table(config: Settings, client: redis.Redis) -> int:
    registry = WeightRegistry(config, client)
    weights = registry.load()
    weights.tensors[ITEM_TABLE] = np.zeros((weights.n_items, 8), dtype=np.float32)
    return rewrite_current(config, client, encode_snapshot(weights))


def drop_start_row(config: Settings, client: redis.Redis) -> int:
    def without_start_row(header: dict) -> None:
        del header["__metadata__"]["start_row"]

    blob = edit_header(current_blob(config, client), without_start_row)
    return rewrite_current(config, client, blob)


BREAKS = {
    "truncated delta": (truncate_delta, 1000),
    "snapshot header declaring 10^9 x 64": (declare_a_huge_table, 1),
    "item table of the wrong width": (widen_the_item_table, 1),
    "delta header without start_row": (drop_start_row, 1000),
}


def store_matches_registry(config: Settings, client: redis.Redis) -> None:
    """Every file in the store is a registered version: nothing orphaned."""
    files = {path.name for path in Path(config.model.store_dir).iterdir()}
    registered = {info.file for info in WeightRegistry(config, client).versions()}
    assert files == registered


def unloadable_alerts(config: Settings) -> list[dict]:
    topic = Topics.from_settings(config.kafka).alerts
    alerts = [orjson.loads(m.value()) for m in read_topic(config.kafka, topic, 1, timeout_s=10)]
    return [a for a in alerts if a["detector"] == "model_version_unloadable"]


@pytest.mark.parametrize("how", list(BREAKS))
def test_a_current_version_that_does_not_load_is_skipped_and_replaced(
    settings: Settings, redis_client: redis.Redis, how: str
) -> None:
    breaks, snapshot_every = BREAKS[how]
    config = trained_lineage(settings, redis_client, snapshot_every)
    registry = WeightRegistry(config, redis_client)
    broken = breaks(config, redis_client)
    parent = registry.info(broken).parent
    produce(config, make_examples(64, seed=22))
    metrics = CollectorRegistry()
    learner = Learner(config, redis_client, metrics)
    learner.start()  # no crash
    try:
        assert learner.head is not None and learner.head.base_version == parent
        for _ in range(30):  # many turns: the broken version is not reloaded on each
            learner.run_once()
        learn_until(learner, TRAINED + 64)
    finally:
        learner.close()
    current = registry.current_version()
    assert current > broken and registry.load().version == current  # replaced, and loads
    final = registry.info(current)
    assert final.examples_seen == TRAINED + 64  # what only the broken version held, again
    assert sum(final.offsets.values()) == TRAINED + 64
    assert metrics.get_sample_value("streamrec_learner_unloadable_versions_total") <= 3
    alerts = unloadable_alerts(config)
    assert len(alerts) == 1 and alerts[0]["level_before"] == broken
    assert alerts[0]["level_after"] == parent
    store_matches_registry(config, redis_client)


def test_a_broken_version_promoted_while_the_learner_runs_is_skipped_once(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = small_settings(settings)
    registry = WeightRegistry(config, redis_client)
    produce(config, make_examples(96, seed=23))
    metrics = CollectorRegistry()
    learner = Learner(config, redis_client, metrics)
    learner.start()
    try:
        learn_until(learner, 96)
        weights = registry.load()
        weights.tensors[ITEM_TABLE] = np.zeros((weights.n_items, 8), dtype=np.float32)
        broken = registry.publish_snapshot(weights, source="finetune").version  # current
        produce(config, make_examples(64, seed=24))
        for _ in range(30):
            learner.run_once()
        learn_until(learner, 160)
    finally:
        learner.close()
    assert registry.current_version() > broken
    assert registry.info(registry.current_version()).examples_seen == 160  # nothing lost
    assert metrics.get_sample_value("streamrec_learner_unloadable_versions_total") <= 3
    assert len(unloadable_alerts(config)) == 1
    store_matches_registry(config, redis_client)


def test_the_learner_refuses_to_start_when_versions_exist_but_none_loads(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = trained_lineage(settings, redis_client, snapshot_every=1000)
    registry = WeightRegistry(config, redis_client)
    for path in Path(config.model.store_dir).iterdir():
        path.write_bytes(path.read_bytes()[:100])
    versions = [info.version for info in registry.versions()]
    learner = Learner(config, redis_client, CollectorRegistry())
    with pytest.raises(LearnerStartError, match="refusing to start"):
        learner.start()
    learner.close()
    # The command says why on one line and exits 2, without a traceback.
    run = subprocess.run(
        [sys.executable, "-m", "cli", "learn"],
        env=learner_env(config), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert "error:" in run.stderr and "refusing to start" in run.stderr
    assert "Traceback" not in run.stderr
    assert [info.version for info in registry.versions()] == versions  # nothing published


def test_a_pointer_to_a_missing_version_continues_from_the_newest_that_loads(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = trained_lineage(settings, redis_client, snapshot_every=1000)
    registry = WeightRegistry(config, redis_client)
    newest = registry.current_version()
    redis_client.set(RedisKeys(config.redis.key_prefix).model_current, newest + 100)
    learner = Learner(config, redis_client, CollectorRegistry())
    learner.start()
    try:
        assert learner.head is not None and learner.head.base_version == newest
        assert learner.examples_seen == TRAINED  # trained, not bootstrapped
    finally:
        learner.close()
