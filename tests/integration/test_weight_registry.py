"""The weight registry on the real Redis: publishing, loading, fallback, pointer, pub/sub,
no orphan files, no reused names, and recovery from the store when Redis lost the registry."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis

from online_models.model.recommender import random_weights
from online_models.model.weights import ITEM_BIAS, ITEM_TABLE, WeightDelta
from online_models.registry.weight_registry import WeightLoadError, WeightRegistry
from streamrec.redis_keys import RedisKeys
from streamrec.settings import ModelSettings, Settings

pytestmark = pytest.mark.integration


def _small(settings: Settings) -> ModelSettings:
    return settings.model.model_copy(
        update={"hidden_size": 16, "num_layers": 1, "num_heads": 2, "max_seq_len": 5}
    )


def forget_registry(client: redis.Redis, settings: Settings) -> None:
    """What a Redis that restarted empty leaves of this test's keys: nothing."""
    keys = list(client.scan_iter(f"{settings.redis.key_prefix}:*"))
    if keys:
        client.delete(*keys)


def store_digests(settings: Settings) -> dict[str, str]:
    """File name -> sha256 of every file in the store."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in Path(settings.model.store_dir).iterdir()
    }


def _delta_on(parent: int, n_items: int, value: float, new_ids: list[str]) -> WeightDelta:
    rows = np.array([0, *range(n_items, n_items + len(new_ids))], dtype=np.int64)
    return WeightDelta(
        version=0,
        parent=parent,
        start_row=n_items,
        new_item_ids=new_ids,
        rows=rows,
        row_values={
            ITEM_TABLE: np.full((len(rows), 16), value, dtype=np.float32),
            ITEM_BIAS: np.full(len(rows), value, dtype=np.float32),
        },
        dense={},
    )


def test_snapshot_then_deltas_load_in_order_and_are_announced(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(RedisKeys(settings.redis.key_prefix).model_updates)
    assert registry.current_version() is None
    with pytest.raises(WeightLoadError):
        registry.load()
    base = random_weights(3, _small(settings))
    v1 = registry.publish_snapshot(base, source="test").version
    v2 = registry.publish_delta(_delta_on(v1, 3, 1.0, ["x"]), source="test").version
    pub3 = registry.publish_delta(_delta_on(v2, 4, 2.0, ["y"]), source="test", examples_seen=7)
    assert pub3.current and registry.current_version() == pub3.version
    loaded = registry.load()
    assert loaded.version == pub3.version
    assert loaded.item_ids == [*base.item_ids, "x", "y"]
    assert loaded.tensors[ITEM_TABLE][0, 0] == 2.0  # the later delta wins
    assert loaded.tensors[ITEM_TABLE][3, 0] == 1.0  # "x" from the first delta
    np.testing.assert_array_equal(loaded.tensors[ITEM_TABLE][1:3], base.tensors[ITEM_TABLE][1:3])
    assert [i.version for i in registry.versions()] == [v1, v2, pub3.version]
    assert registry.info(pub3.version).examples_seen == 7
    announced: list[int] = []
    deadline = time.monotonic() + 5
    while len(announced) < 3 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "message":
            announced.append(int(message["data"]))
    assert announced == [v1, v2, pub3.version]
    # An incremental load from an older in-memory version gives the same weights.
    v2_weights = registry.load(v2)
    again = registry.load(base=v2_weights)
    np.testing.assert_array_equal(again.tensors[ITEM_TABLE], loaded.tensors[ITEM_TABLE])
    # ... and names the rows the deltas since that version touched (a follower's update);
    # a version read from its snapshot names none
    assert v2_weights.changes is None and loaded.changes is None
    assert again.changes is not None and again.changes.base == v2
    assert again.changes.rows.tolist() == [0, 4]  # row 0 and "y": not "x", added before v2
    v1_weights = registry.load(v1)
    assert registry.load(base=v1_weights).changes.rows.tolist() == [0, 3, 4]


def test_a_follower_reads_the_lineage_back_to_the_version_it_holds_not_to_the_snapshot(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    version = registry.publish_snapshot(random_weights(3, _small(settings)), source="t").version
    for step in range(5):
        delta = _delta_on(version, 3 + step, float(step), [f"n{step}"])
        version = registry.publish_delta(delta, source="test").version
    held = registry.load(version - 1)
    read: list[int] = []
    original = registry.info

    def counted(number: int) -> object:
        read.append(number)
        return original(number)

    registry.info = counted  # type: ignore[method-assign]
    followed = registry.load(version, base=held)
    assert read == [version, version - 1]  # not the four versions before it
    assert followed.changes is not None and followed.changes.base == version - 1
    read.clear()
    fresh = registry.load(version)
    assert read == list(range(version, version - 6, -1))  # from scratch: to the snapshot
    np.testing.assert_array_equal(followed.tensors[ITEM_TABLE], fresh.tensors[ITEM_TABLE])


def test_corrupted_delta_falls_back_to_the_snapshot(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    base = random_weights(3, _small(settings))
    v1 = registry.publish_snapshot(base, source="test").version
    v2 = registry.publish_delta(_delta_on(v1, 3, 1.0, ["x"]), source="test").version
    info = registry.info(v2)
    path = settings.model.store_dir / info.file
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    loaded = registry.load()
    assert loaded.version == v1
    assert loaded.item_ids == base.item_ids
    np.testing.assert_array_equal(loaded.tensors[ITEM_TABLE], base.tensors[ITEM_TABLE])
    # Missing delta file: same fallback.
    path.unlink()
    assert registry.load().version == v1


def test_broken_snapshot_falls_back_to_an_older_one_or_raises(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    first = registry.publish_snapshot(random_weights(3, _small(settings)), source="a").version
    second = registry.publish_snapshot(random_weights(5, _small(settings)), source="b").version
    (settings.model.store_dir / registry.info(second).file).write_bytes(b"junk")
    assert registry.load().version == first
    (settings.model.store_dir / registry.info(first).file).unlink()
    with pytest.raises(WeightLoadError):
        registry.load()


def test_delta_on_a_superseded_parent_does_not_become_current(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    v1 = registry.publish_snapshot(random_weights(3, _small(settings)), source="learner").version
    promoted = registry.publish_snapshot(random_weights(3, _small(settings)), source="finetune")
    late = registry.publish_delta(_delta_on(v1, 3, 1.0, []), source="learner")
    assert not late.current
    assert registry.current_version() == promoted.version
    registry.set_current(v1)  # rollback
    assert registry.current_version() == v1
    with pytest.raises(KeyError):
        registry.set_current(10_000)


def test_fitted_learner_knobs_follow_the_lineage_unless_a_version_sets_its_own(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    fitted = {"learner.row_lr": 4.0, "learner.sampled_negatives": 2048.0}
    trained = random_weights(3, _small(settings))
    v1 = registry.publish_snapshot(trained, source="train", metrics={"hr@20": 0.5, **fitted})
    tuned = replace(trained, version=v1.version)
    finetuned = registry.publish_snapshot(tuned, source="finetune", metrics={"hr@20": 0.6})
    delta = registry.publish_delta(_delta_on(finetuned.version, 3, 1.0, []), source="learner")
    assert registry.info(finetuned.version).metrics == {"hr@20": 0.6} | fitted  # type: ignore[union-attr]
    assert registry.info(delta.version).metrics == fitted  # type: ignore[union-attr]
    own = {"learner.row_lr": 1.0, "learner.sampled_negatives": 4096.0}
    retuned = registry.publish_snapshot(tuned, source="train", metrics=own)
    assert registry.info(retuned.version).metrics == own  # type: ignore[union-attr]
    unrelated = registry.publish_snapshot(random_weights(3, _small(settings)), source="t")
    assert registry.info(unrelated.version).metrics == {}  # type: ignore[union-attr]


def test_non_finite_weights_are_never_published(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    weights = random_weights(3, _small(settings))
    weights.tensors[ITEM_TABLE][0, 0] = np.nan
    with pytest.raises(ValueError):
        registry.publish_snapshot(weights, source="test")
    assert registry.current_version() is None


def test_prune_keeps_the_newest_snapshots_chains_and_the_current_one(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    small = _small(settings)
    first = registry.publish_snapshot(random_weights(3, small), source="t").version
    old_delta = registry.publish_delta(_delta_on(first, 3, 1.0, []), source="t").version
    second = registry.publish_snapshot(random_weights(3, small), source="t").version
    third = registry.publish_snapshot(random_weights(3, small), source="t").version
    registry.set_current(old_delta)  # a rollback to an old version protects its chain
    assert registry.prune(keep_snapshots=2) == []
    registry.set_current(third)
    assert sorted(registry.prune(keep_snapshots=2)) == [first, old_delta]
    assert [i.version for i in registry.versions()] == [second, third]
    assert not list(settings.model.store_dir.glob(f"v{first:010d}.*"))
    assert len(list(settings.model.store_dir.iterdir())) == 2
    assert registry.load().version == third


def test_a_publication_that_loses_its_compare_and_set_keeps_no_file(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    v1 = registry.publish_snapshot(random_weights(3, _small(settings)), source="learner").version
    promoted = registry.publish_snapshot(random_weights(3, _small(settings)), source="finetune")
    files = store_digests(settings)
    for _ in range(5):  # a learner that keeps trying on a superseded parent
        late = registry.publish_delta(_delta_on(v1, 3, 1.0, ["z"]), source="learner")
        assert not late.current and late.version == 0
        snapshot = registry.publish_snapshot(
            random_weights(3, _small(settings)), source="learner", expected_current=v1
        )
        assert not snapshot.current
    assert store_digests(settings) == files  # nothing written, nothing left behind
    assert [i.version for i in registry.versions()] == [v1, promoted.version]
    assert registry.publish_delta(
        _delta_on(v1, 3, 1.0, []), source="learner", expected_current=promoted.version
    ).current  # expecting what is current: it wins (the learner replacing a broken version)


def test_blobs_are_named_by_their_digest_and_never_replaced_after_redis_lost_the_registry(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    trained = registry.publish_snapshot(random_weights(40, _small(settings)), source="train")
    delta = registry.publish_delta(_delta_on(trained.version, 40, 1.0, ["x"]), source="t")
    info = registry.info(delta.version)
    assert info is not None and info.sha256 in info.file
    before = store_digests(settings)
    forget_registry(redis_client, settings)  # Redis restarted empty
    after_reset = registry.publish_snapshot(random_weights(3, _small(settings)), source="init")
    assert after_reset.version > delta.version  # the counter restarts above the store
    assert {n: d for n, d in store_digests(settings).items() if n in before} == before
    assert len(store_digests(settings)) == len(before) + 1


def test_the_lineage_is_recovered_from_the_store_when_redis_lost_it(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    assert registry.is_empty() and registry.recover_lineage() is None
    v1 = registry.publish_snapshot(random_weights(30, _small(settings)), source="train").version
    v2 = registry.publish_delta(
        _delta_on(v1, 30, 1.0, ["x"]), source="learner", examples_seen=64,
        offsets={"topic:0": 64}, metrics={"hr": 0.4},
    ).version  # fmt: skip
    v3 = registry.publish_delta(_delta_on(v2, 31, 2.0, []), source="learner").version
    infos = registry.versions()
    expected = registry.load()
    forget_registry(redis_client, settings)
    assert registry.current_version() is None and not registry.is_empty()
    assert registry.recover_lineage() == v3
    assert registry.current_version() == v3
    assert registry.versions() == infos  # every field, offsets and examples_seen included
    recovered = registry.load()
    assert recovered.version == v3 and recovered.item_ids == expected.item_ids
    np.testing.assert_array_equal(recovered.tensors[ITEM_TABLE], expected.tensors[ITEM_TABLE])
    assert registry.recover_lineage() is None  # idempotent: the pointer is left alone
    assert registry.publish_delta(_delta_on(v3, 31, 3.0, []), source="learner").version == v3 + 1


def test_a_broken_snapshot_falls_back_to_its_parent_not_to_an_older_snapshot_alone(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    v1 = registry.publish_snapshot(random_weights(3, _small(settings)), source="t").version
    v2 = registry.publish_delta(_delta_on(v1, 3, 1.0, ["x"]), source="t").version
    periodic = registry.load(v2)  # the learner's periodic snapshot of v2 (parent v2)
    v3 = registry.publish_snapshot(periodic, source="t").version
    (settings.model.store_dir / registry.info(v3).file).write_bytes(b"\x00" * 64)
    loaded = registry.load()
    assert loaded.version == v2 and loaded.item_ids == periodic.item_ids


def test_a_version_that_does_not_fit_the_model_is_skipped_like_a_corrupt_one(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    good = registry.publish_snapshot(random_weights(3, _small(settings)), source="t").version
    wide = random_weights(3, _small(settings))
    wide.tensors[ITEM_TABLE] = np.zeros((3, 8), dtype=np.float32)  # the wrong width
    bad = registry.publish_snapshot(wide, source="t").version
    assert registry.load().version == good
    assert registry.load(bad).version == good


def test_load_newest_stands_in_for_a_pointer_to_a_missing_version(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    v1 = registry.publish_snapshot(random_weights(3, _small(settings)), source="t").version
    redis_client.set(RedisKeys(settings.redis.key_prefix).model_current, v1 + 50)
    with pytest.raises(WeightLoadError):
        registry.load()
    assert registry.load_newest(registry.current_version()).version == v1


def test_the_canary_pointer_is_announced_cleared_only_while_it_holds_and_protects_its_chain(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = WeightRegistry(settings, redis_client)
    keys = RedisKeys(settings.redis.key_prefix)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.model_canary_updates)
    small = _small(settings)
    first = registry.publish_snapshot(random_weights(3, small), source="t").version
    with pytest.raises(KeyError):
        registry.set_canary(first + 100)
    assert registry.canary_version() is None
    registry.set_canary(first)
    second = registry.publish_snapshot(random_weights(3, small), source="t").version
    third = registry.publish_snapshot(random_weights(3, small), source="t").version
    assert registry.canary_version() == first and registry.current_version() == third
    assert registry.prune(keep_snapshots=2) == [], "the canary's chain is kept"
    assert not registry.clear_canary(only_if=second), "a newer canary is never cleared"
    assert registry.clear_canary(only_if=first) and registry.canary_version() is None
    assert not registry.clear_canary()
    announced = []
    deadline = time.monotonic() + 5
    while len(announced) < 2 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            announced.append(message["data"])
    assert announced == [str(first).encode(), b""]
    assert registry.prune(keep_snapshots=2) == [first]
    pubsub.close()
