"""Shared fixtures: one real broker per test session, the real Redis, per-test isolation.

Every test gets its own topic prefix and Redis key prefix, so tests never see each
other's data and nothing is flushed on a server the tests did not start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamrec.kafka_clients import ensure_topics
from streamrec.local_services import free_port, redis_answers, start_broker, wait_for
from streamrec.settings import (
    FlowSettings,
    KafkaSettings,
    ModelSettings,
    RedisSettings,
    Settings,
)
from streamrec.topics import Topics

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_ROOT.parent / "shared" / "data" / "yoochoose-sample"


def tiny_model(settings: Settings, **overrides: object) -> ModelSettings:
    """A model small enough for fast tests, stored in the test's own model directory."""
    sizes: dict[str, object] = {
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "max_seq_len": 5,
        "store_dir": settings.model.store_dir,
    }
    return ModelSettings(**(sizes | overrides))


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real tansu broker on a free port for the whole test session."""
    state = tmp_path_factory.mktemp("broker")
    bootstrap = f"127.0.0.1:{free_port()}"
    settings = Settings(state_dir=state, kafka=KafkaSettings(bootstrap_servers=bootstrap))
    start_broker(settings)
    yield bootstrap
    pid = int((state / "run" / "broker.pid").read_text())
    os.kill(pid, signal.SIGTERM)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis when it answers, otherwise a private server on a free port."""
    url = os.environ.get("STREAMREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(url):
        yield url
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no Redis answers and redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        cwd=tmp_path_factory.mktemp("redis"),
    )
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: redis_answers(url, 0.2), 10, "redis")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def settings(broker: str, redis_url: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings isolated to this test: own topics, own Redis key prefix, own state dir."""
    tag = uuid.uuid4().hex[:10]
    built = Settings(
        state_dir=tmp_path / "state",
        data_dir=SAMPLE_DIR,
        kafka=KafkaSettings(bootstrap_servers=broker, topic_prefix=f"t{tag}-", partitions=2),
        redis=RedisSettings(redis_url=redis_url, key_prefix=f"test-{tag}"),
        flow=FlowSettings(recovery_dir=tmp_path / "recovery", metrics_port=0),
        model=ModelSettings(store_dir=tmp_path / "models"),
    )
    ensure_topics(built.kafka, Topics.from_settings(built.kafka).all())
    yield built
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{built.redis.key_prefix}:*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


@pytest.fixture
def redis_client(settings: Settings) -> redis.Redis:
    """A client on the test's Redis (use ``RedisKeys(settings.redis.key_prefix)`` for keys)."""
    return redis.Redis.from_url(settings.redis.redis_url.get_secret_value())


@pytest.fixture
def topics(settings: Settings) -> Topics:
    return Topics.from_settings(settings.kafka)
