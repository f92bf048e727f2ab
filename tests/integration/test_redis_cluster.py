"""streamrec on a real 3-master Redis Cluster: the flow, the registry, the learner, serving.

Each test starts its own cluster (``private_redis_cluster``) and points its settings at it
through a ``redis+cluster://`` URL, as an operator would.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from redis.cluster import RedisCluster

from online_models.learner.loop import Learner
from online_models.model.recommender import random_weights
from online_models.model.scorer import SessionScorer
from online_models.registry.weight_registry import WeightRegistry
from serving.server import spawn_server, stop_server
from streamrec.redis_connection import connect_redis
from streamrec.redis_keys import RedisKeys
from streamrec.session_features import SessionFeatures, encode_session_features
from streamrec.settings import ModelSettings, Settings
from tests.conftest import free_port
from tests.faults.test_flow_redis_loss import expected_popularity
from tests.integration.test_feature_flow import (
    assert_popular_close,
    decoded,
    derived_keys_removed,  # noqa: F401 - autouse fixture: removes the tagged keys
    flow_settings,
    produce_events,
    read_popular,
    read_state,
    run_flow_in_process,
)
from tests.integration.test_learner import learn_until, make_examples, produce, small_settings
from tests.integration.test_serving_api import wait_until
from tests.private_services import PrivateRedisCluster
from tests.process_env import process_env
from tests.unit.flows.test_shard import reference_features, sample_events

pytestmark = pytest.mark.integration

N_ITEMS = 300


def cluster_client(settings: Settings) -> RedisCluster:
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    assert isinstance(client, RedisCluster)
    return client


def test_the_flow_writes_the_reference_features_spread_over_every_master(
    settings: Settings, private_redis_cluster: PrivateRedisCluster
) -> None:
    events = sample_events(8000)
    config = private_redis_cluster.attach(
        flow_settings(settings, "cluster", popular_size=50_000)  # every item: no ties at its edge
    )
    produce_events(config, events)
    run_flow_in_process(config)

    state = read_state(config)
    assert decoded(state) == reference_features(events)
    assert_popular_close(read_popular(config), expected_popularity(config, events))
    client = cluster_client(config)
    keys = RedisKeys(config.redis.key_prefix)
    slots = [client.keyslot(keys.session(session)) for session in state]
    masters = Counter(private_redis_cluster.master_of(slot) for slot in slots)
    assert masters.keys() == set(private_redis_cluster.ports)
    assert min(masters.values()) > len(state) / 5  # spread, not piled on one master
    categories = client.hgetall(keys.item_categories)
    clicked = {e.item_id for e in events if e.type == "click" and e.category}
    assert {item.decode() for item in categories} == clicked
    markers = [key for key in client.scan_iter(f"{keys.flow_marker}:*")]
    assert len(markers) == 3  # one per master


def test_learner_registry_and_serving_follow_versions_on_a_cluster(
    settings: Settings, private_redis_cluster: PrivateRedisCluster, tmp_path: Path
) -> None:
    config = private_redis_cluster.attach(small_settings(settings))
    client = cluster_client(config)
    keys = RedisKeys(config.redis.key_prefix)
    produce(config, make_examples(200))
    learner = Learner(config, client, CollectorRegistry())
    learner.start()
    try:
        learn_until(learner, 200)
    finally:
        learner.close()
    registry = WeightRegistry(config, client)
    learned = registry.versions()
    assert {info.kind for info in learned} == {"snapshot", "delta"}
    assert registry.load().version == registry.current_version() == learned[-1].version
    signals = client.xrange(keys.learner_signals)
    assert sum(int(fields[b"examples"]) for _, fields in signals) == 200

    # Serving, on its own model over N_ITEMS items, published through the same registry.
    first = registry.publish_snapshot(random_weights(N_ITEMS, config.model, seed=1), source="t")
    features = SessionFeatures(("item-1", "item-2"), 2, 0, (), {}, 1, 2, 1)
    client.hset(keys.session("known"), mapping=encode_session_features(features))
    port = free_port()
    env = process_env(
        config,
        STREAMREC_SERVING_WORKERS="1",
        STREAMREC_SERVING_POLL_INTERVAL_S="60",  # a swap within the test comes by pub/sub
    )
    server = spawn_server(env, port, tmp_path / "server.log")
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        wait_until(lambda: http.get("/readyz").status_code == 200, "server ready")
        expected = reference_top_k(registry, config.model, first.version)
        assert top_k(http) == (first.version, expected)
        wait_until(lambda: http.get("/model").json()["pubsub_connected"], "subscribed")

        second = registry.publish_snapshot(
            random_weights(N_ITEMS, config.model, seed=2), source="t"
        )
        wait_until(lambda: http.get("/model").json()["version"] == second.version, "hot swap")
        assert http.get("/model").json()["source"] == "pubsub"
        expected = reference_top_k(registry, config.model, second.version)
        assert top_k(http) == (second.version, expected)
    finally:
        stop_server(server)


def top_k(http: httpx.Client) -> tuple[int, list[str]]:
    response = http.get("/recommend", params={"session_id": "known", "k": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["model_version"], [item["item_id"] for item in body["items"]]


def reference_top_k(registry: WeightRegistry, model: ModelSettings, version: int) -> list[str]:
    """The top 10 of the session, from the model itself."""
    scorer = SessionScorer.from_weights(registry.load(version), model)
    order = np.argsort(-scorer.score(("item-1", "item-2")), kind="stable")
    return [scorer.item_ids[r] for r in order[:10]]
