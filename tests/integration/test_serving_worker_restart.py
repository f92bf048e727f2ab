"""A killed worker is respawned while the other worker keeps answering."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from online_models.model.recommender import random_weights
from online_models.registry.weight_registry import WeightRegistry
from serving.server import spawn_server, stop_server
from streamrec.settings import ModelSettings, RedisSettings, Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def worker_pids(server_pid: int) -> set[int]:
    children: set[int] = set()
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            children.update(int(pid) for pid in (task / "children").read_text().split())
    return children


def test_a_killed_worker_is_respawned_and_requests_keep_succeeding(
    redis_url: str, broker: str, tmp_path: Path
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    settings = Settings(
        redis=RedisSettings(redis_url=redis_url, key_prefix=prefix),
        model=ModelSettings(store_dir=tmp_path / "models"),
    )
    client = redis.Redis.from_url(redis_url)
    WeightRegistry(settings, client).publish_snapshot(
        random_weights(100, settings.model), source="test"
    )
    port = free_port()
    env = os.environ | {
        "STREAMREC_BOOTSTRAP_SERVERS": broker,
        "STREAMREC_REDIS_URL": redis_url,
        "STREAMREC_KEY_PREFIX": prefix,
        "STREAMREC_MODEL_STORE_DIR": str(settings.model.store_dir),
        "STREAMREC_SERVING_WORKERS": "2",
    }
    server = spawn_server(env, port, tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 30
        while len(worker_pids(server.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = worker_pids(server.pid)
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        answered = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if http.get("/healthz").status_code == 200:
                        answered += 1
                except httpx.TransportError:
                    pass  # a request caught on the killed worker's connection
                now = worker_pids(server.pid)
                if len(now) == 2 and victim not in now and answered >= 5:
                    break
                time.sleep(0.05)
        after = worker_pids(server.pid)
        assert victim not in after and len(after) == 2, "the worker was respawned"
        assert answered >= 5, "the server kept answering meanwhile"
        assert server.poll() is None
    finally:
        stop_server(server)
        doomed = list(client.scan_iter(f"{prefix}:*"))
        if doomed:
            client.delete(*doomed)
