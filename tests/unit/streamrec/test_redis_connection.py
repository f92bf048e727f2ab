"""Which Redis a URL names (one server or a cluster's seeds), without a password in sight."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import redis
from redis.cluster import RedisCluster, key_slot

from streamrec.redis_connection import (
    ClusterAddress,
    connect_redis,
    parse_cluster_url,
    primary_keys,
)
from streamrec.redis_keys import RedisKeys


def test_single_node_urls_are_not_clusters() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://h:1/2", "unix:///tmp/redis.sock"):
        assert parse_cluster_url(url) is None


def test_a_cluster_url_names_its_seeds_and_credentials() -> None:
    parsed = parse_cluster_url("redis+cluster://app:p%40ss@10.0.0.1:7000,10.0.0.2:7001,h3/0")
    assert parsed == ClusterAddress(
        seeds=(("10.0.0.1", 7000), ("10.0.0.2", 7001), ("h3", 6379)),
        username="app",
        password="p@ss",
        tls=False,
    )
    tls = parse_cluster_url("rediss+cluster://:secret@[::1]:7000")
    assert tls == ClusterAddress((("::1", 7000),), None, "secret", True)


def test_a_password_with_an_at_sign_ends_at_the_last_one() -> None:
    parsed = parse_cluster_url("redis+cluster://u:a@b@h:7000")
    assert parsed is not None
    assert (parsed.password, parsed.seeds) == ("a@b", (("h", 7000),))


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://u:hunter2@h:7000/3",  # a cluster has only database 0
        "redis+cluster://u:hunter2@h:7000?ssl_cert_reqs=none",  # query options are not read
        "redis+cluster://u:hunter2@h:port",  # not a port
        "redis+cluster://u:hunter2@h:7000,,h2:7001",  # an empty seed
    ],
)
def test_a_malformed_cluster_url_is_refused_with_its_password_masked(url: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_cluster_url(url)
    assert "hunter2" not in str(raised.value)
    assert "****" in str(raised.value)


def test_a_single_node_client_is_made_lazily_with_its_options(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="streamrec.redis")
    client = connect_redis("redis://:hunter2@127.0.0.1:1/0", socket_timeout=0.25)
    assert isinstance(client, redis.Redis) and not isinstance(client, RedisCluster)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 0.25
    (record,) = [r for r in caplog.records if r.getMessage() == "redis_client"]
    assert record.fields == {"url": "redis://:****@127.0.0.1:1/0", "cluster": False}


def test_registry_keys_share_one_slot_and_sessions_spread() -> None:
    keys = RedisKeys("shop")
    registry = [
        keys.model_current, keys.model_versions, keys.model_version(1), keys.model_version(99),
        keys.model_sequence, keys.model_canary, keys.model_updates, keys.model_canary_updates,
    ]  # fmt: skip
    assert len({key_slot(key.encode()) for key in registry}) == 1
    assert key_slot(keys.popular.encode()) == key_slot(keys.popular_rebuild.encode())
    sessions = {key_slot(keys.session(f"s{n}").encode()) for n in range(1000)}
    assert len(sessions) > 900
    assert all(key.startswith("shop:") for key in [*registry, keys.popular])


def test_one_marker_key_per_primary_serving_slots_found_without_a_full_search() -> None:
    a, b, idle = (SimpleNamespace(name=name) for name in ("a:1", "b:2", "c:3"))
    slots = {slot: [a if slot < 8192 else b] for slot in range(16384)}
    client = RedisCluster.__new__(RedisCluster)  # the slot map alone, no connection
    client.nodes_manager = SimpleNamespace(slots_cache=slots)  # type: ignore[assignment]
    client.get_primaries = lambda: [a, b, idle]  # type: ignore[method-assign]
    hashed: list[str] = []

    def keyslot(key: str) -> int:
        hashed.append(key)
        return key_slot(key.encode())

    client.keyslot = keyslot  # type: ignore[method-assign]
    keys = primary_keys(client, "p:flow:marker")
    assert sorted(slots[key_slot(k.encode())][0].name for k in keys) == ["a:1", "b:2"]
    assert len(hashed) < 100  # a primary with no slots does not make it try every name
    assert primary_keys(client, "p:flow:marker") == keys  # the same names every time
