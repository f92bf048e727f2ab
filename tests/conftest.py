"""Shared fixtures: one real broker per test session, the real Redis, per-test isolation.

Every test gets its own topic prefix and Redis key prefix, so tests never see each
other's data and nothing is flushed on a server the tests did not start. A fault test
that kills or restarts its broker or Redis takes ``private_broker`` or ``private_redis``
(``private_services.py``): the shared ones are never stopped.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamrec.kafka_clients import ensure_topics
from streamrec.local_services import (
    free_port,  # noqa: F401 - tests import it from here
    redis_answers,
)
from streamrec.settings import (
    DriftSettings,
    FlowSettings,
    KafkaSettings,
    LearnerSettings,
    ModelSettings,
    RedisSettings,
    Settings,
)
from streamrec.topics import Topics
from tests.private_services import PrivateBroker, PrivateRedis, PrivateRedisCluster

# The learner's compiled encoder takes seconds to compile for each model shape, and the
# suite builds learners of many shapes (their subprocesses inherit this too): everywhere
# but the tests of the compiled path itself (``test_compiled_backbone.py``, which ask for
# it), learners run the eager reference code.
os.environ.setdefault("STREAMREC_LEARNER_COMPILE", "off")

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
    server = PrivateBroker(tmp_path_factory.mktemp("broker"))
    yield server.kafka.bootstrap_servers
    server.kill()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis when it answers, otherwise a private server on a free port."""
    url = os.environ.get("STREAMREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(url):
        yield url
        return
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.kill()


@pytest.fixture
def settings(broker: str, redis_url: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings isolated to this test: own topics, own Redis key prefix, own state dir, own
    consumer groups (a group's members share rebalances across topics on one broker)."""
    tag = uuid.uuid4().hex[:10]
    built = Settings(
        state_dir=tmp_path / "state",
        data_dir=SAMPLE_DIR,
        kafka=KafkaSettings(bootstrap_servers=broker, topic_prefix=f"t{tag}-", partitions=2),
        redis=RedisSettings(redis_url=redis_url, key_prefix=f"test-{tag}"),
        flow=FlowSettings(recovery_dir=tmp_path / "recovery", metrics_port=0),
        model=ModelSettings(store_dir=tmp_path / "models"),
        learner=LearnerSettings(consumer_group=f"learner-{tag}"),
        drift=DriftSettings(consumer_group=f"drift-{tag}"),
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


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A broker of this test's own, which it may kill or restart empty; killed after it.

    Empty: make the topics there (``ensure_topics``), also after ``restart_empty``.
    """
    server = PrivateBroker(tmp_path / "private-broker")
    yield server
    server.kill()


@pytest.fixture
def private_redis_cluster(tmp_path: Path) -> Iterator[PrivateRedisCluster]:
    """A 3-master Redis Cluster of this test's own (``restart_empty(port)`` restarts one
    master empty); killed after it, its directory removed with ``tmp_path``."""
    cluster = PrivateRedisCluster(tmp_path / "private-redis-cluster")
    yield cluster
    cluster.kill()
    shutil.rmtree(cluster.workdir, ignore_errors=True)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, which it may kill or restart empty; killed after it."""
    server = PrivateRedis(tmp_path / "private-redis")
    yield server
    server.kill()
