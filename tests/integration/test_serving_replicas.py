"""Serving scales out as stateless replicas: two servers behind one balanced address follow
the same registry through ten hot swaps without a failed request."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis

from online_models.model.recommender import random_weights
from online_models.registry.weight_registry import WeightRegistry
from serving.server import spawn_server, stop_server
from streamrec.settings import ModelSettings, RedisSettings, Settings
from tests.conftest import free_port
from tests.tcp_balancer import round_robin

pytestmark = pytest.mark.integration
SWAPS = 10


def served_version(port: int) -> int | None:
    return httpx.get(f"http://127.0.0.1:{port}/model", timeout=5).json()["version"]


def test_two_replicas_behind_one_address_follow_ten_swaps_without_an_error(
    redis_url: str, broker: str, tmp_path: Path
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    settings = Settings(
        redis=RedisSettings(redis_url=redis_url, key_prefix=prefix),
        model=ModelSettings(store_dir=tmp_path / "models", hidden_size=16, max_seq_len=5),
    )
    client = redis.Redis.from_url(redis_url)
    registry = WeightRegistry(settings, client)
    registry.publish_snapshot(random_weights(200, settings.model, seed=0), source="test")
    env = os.environ | {
        "STREAMREC_BOOTSTRAP_SERVERS": broker,
        "STREAMREC_REDIS_URL": redis_url,
        "STREAMREC_KEY_PREFIX": prefix,
        "STREAMREC_MODEL_STORE_DIR": str(settings.model.store_dir),
        "STREAMREC_SERVING_WORKERS": "1",
    }
    ports = [free_port(), free_port()]
    servers = [spawn_server(env, port, tmp_path / f"replica-{port}.log") for port in ports]
    statuses: Counter[int | str] = Counter()
    stop = threading.Event()

    def shop(balanced: int) -> None:
        # A new connection per request, so the balancer spreads them over the replicas.
        with httpx.Client(base_url=f"http://127.0.0.1:{balanced}", timeout=10) as http:
            while not stop.is_set():
                try:
                    answer = http.get(
                        "/recommend", params={"session_id": f"s{statuses.total() % 50}", "k": 10},
                        headers={"Connection": "close"},
                    )  # fmt: skip
                    statuses[answer.status_code] += 1
                except httpx.TransportError as exc:
                    statuses[type(exc).__name__] += 1

    try:
        with round_robin(ports) as (balanced, connections):
            load = threading.Thread(target=shop, args=(balanced,), daemon=True)
            load.start()
            for seed in range(1, SWAPS + 1):
                version = registry.publish_snapshot(
                    random_weights(200 + seed, settings.model, seed=seed), source="test"
                ).version
                deadline = time.monotonic() + 20
                while any(served_version(p) != version for p in ports):
                    assert time.monotonic() < deadline, f"replicas did not follow v{version}"
                    time.sleep(0.05)
            stop.set()
            load.join(15)
    finally:
        for server in servers:
            stop_server(server)
        doomed = list(client.scan_iter(f"{prefix}:*"))
        if doomed:
            client.delete(*doomed)
    assert statuses[200] > 100 and set(statuses) == {200}, statuses
    assert min(connections[p] for p in ports) > 40, connections
