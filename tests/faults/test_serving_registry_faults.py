"""A running ``streamrec serve`` keeps following a registry that misbehaves.

One server (one worker, fast polling and short retry backoff) follows a real weight
registry in Redis while the tests inject the faults operators met: a bogus announcement,
a registry reset that restarted the numbering, and versions whose blobs load but cannot
be built into a scorer (``KeyError``, ``RuntimeError``). Through all of it the server
answers every request from the last good model.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from online_models.model.recommender import random_weights
from online_models.model.weights import ModelWeights
from online_models.registry.weight_registry import WeightRegistry
from serving.server import spawn_server, stop_server
from streamrec.redis_keys import RedisKeys
from streamrec.session_features import SessionFeatures, encode_session_features
from streamrec.settings import KafkaSettings, ModelSettings, RedisSettings, Settings
from tests.conftest import free_port
from tests.process_env import process_env

pytestmark = pytest.mark.faults
N_ITEMS = 50
RETRY_BASE_S = 0.5
RETRY_MAX_S = 2.0
POLL_INTERVAL_S = 0.5


@dataclass
class Served:
    settings: Settings
    registry: WeightRegistry
    redis: redis.Redis
    keys: RedisKeys
    http: httpx.Client


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def served(
    broker: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("serving-faults")
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=broker, topic_prefix=f"t{uuid.uuid4().hex[:8]}-"),
        redis=RedisSettings(redis_url=redis_url, key_prefix=f"test-{uuid.uuid4().hex[:10]}"),
        model=ModelSettings(store_dir=workdir / "models"),
    )
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(settings.redis.key_prefix)
    registry = WeightRegistry(settings, client)
    registry.publish_snapshot(random_weights(N_ITEMS, settings.model, seed=1), source="test")
    features = SessionFeatures(("item-1", "item-2"), 2, 0, (), {}, 1, 2, 1)
    client.hset(keys.session("known"), mapping=encode_session_features(features))
    port = free_port()
    env = process_env(
        settings,
        STREAMREC_SERVING_WORKERS="1",
        STREAMREC_SERVING_POLL_INTERVAL_S=str(POLL_INTERVAL_S),
        STREAMREC_SERVING_MODEL_RETRY_BASE_S=str(RETRY_BASE_S),
        STREAMREC_SERVING_MODEL_RETRY_MAX_S=str(RETRY_MAX_S),
    )
    server = spawn_server(env, port, workdir / "server.log")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        wait_until(lambda: http.get("/readyz").status_code == 200, "server ready", 30)
        yield Served(settings, registry, client, keys, http)
    finally:
        http.close()
        assert stop_server(server) == 0
        doomed = list(client.scan_iter(f"{keys.prefix}:*"))
        if doomed:
            client.delete(*doomed)


def model(served: Served) -> dict:
    return served.http.get("/model").json()


def publish(served: Served, seed: int, drop: str | None = None) -> int:
    """Publish a new snapshot (current at once); ``drop`` leaves one tensor out of it."""
    weights = random_weights(N_ITEMS, served.settings.model, seed=seed)
    if drop is not None:
        tensors = {name: value for name, value in weights.tensors.items() if name != drop}
        weights = ModelWeights(weights.version, weights.shape, weights.item_ids, tensors)
    return served.registry.publish_snapshot(weights, source="test").version


class Traffic:
    """Requests sent in a loop while a fault is injected: every status and version seen."""

    def __init__(self, served: Served) -> None:
        self.base_url = served.http.base_url
        self.statuses: list[int] = []
        self.versions: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        wait_until(lambda: bool(self.versions), "first answer")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while not self._stop.is_set():
                response = client.get("/recommend", params={"session_id": "known", "k": 5})
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    self.versions.append(response.json()["model_version"])
                time.sleep(0.01)


def test_a_bogus_announcement_does_not_stop_serving_from_following(served: Served) -> None:
    served.redis.publish(served.keys.model_updates, "99999")
    version = publish(served, seed=2)
    wait_until(lambda: model(served)["version"] == version, "the real version served", 10)
    assert 99999 not in [f["version"] for f in model(served)["failed_versions"]]


def test_serving_follows_the_registry_down_after_a_reset_and_a_rollback(served: Served) -> None:
    before = publish(served, seed=3)
    wait_until(lambda: model(served)["version"] == before, "version before the reset")
    # Redis lost the registry (a reset): its keys are gone and publishing starts over.
    registry_keys = list(served.redis.scan_iter(f"{served.keys.prefix}:{{model}}:*"))
    served.redis.delete(*registry_keys)
    first = publish(served, seed=4)
    wait_until(lambda: model(served)["version"] == first, "the new lineage served")
    second = publish(served, seed=5)
    wait_until(lambda: model(served)["version"] == second, "its next version served")
    served.registry.set_current(first)  # a rollback: current goes down
    wait_until(lambda: model(served)["version"] == first, "the rollback followed")
    assert model(served)["failed_versions"] == []


def test_a_version_that_does_not_fit_the_model_is_retried_with_backoff_while_the_old_serves(
    served: Served,
) -> None:
    """A blob without one of the model's tensors: the registry refuses it and falls back,
    or hands it over and building the scorer raises ``KeyError`` (which of the two is the
    registry's business; the unit tests cover each exception type). Either way serving
    lists it, retries it with backoff and keeps answering from the old version."""
    good = publish(served, seed=6)
    wait_until(lambda: model(served)["version"] == good, "good version served")
    with Traffic(served) as traffic:
        bad = publish(served, seed=7, drop="head.item_bias")

        def failure() -> dict | None:
            failed = {f["version"]: f for f in model(served)["failed_versions"]}
            return failed.get(bad)

        wait_until(lambda: (failure() or {}).get("attempts", 0) >= 3, "backoff at its max")
        reported = failure()
        assert reported is not None and reported["reason"]
        assert reported["next_retry_at"] <= time.time() + RETRY_MAX_S + 0.1
        # At the max backoff a retry comes every RETRY_MAX_S / 2 .. RETRY_MAX_S (+ a poll):
        # still retried, and far from the tight loop of one load per poll.
        window_s = 6.0
        time.sleep(window_s)  # counting retries over a fixed window: nothing to poll for
        retries = failure()["attempts"] - reported["attempts"]  # type: ignore[index]
        assert 2 <= retries <= window_s / (RETRY_MAX_S / 2) + 1, retries
        fixed = publish(served, seed=8)
        wait_until(lambda: model(served)["version"] == fixed, "a later good version served")
    assert set(traffic.statuses) == {200}, "no request failed"
    assert bad not in traffic.versions and good in traffic.versions
    metrics = served.http.get("/metrics").text.splitlines()
    (counted,) = [m for m in metrics if m.startswith("streamrec_serving_model_load_failures_total")]
    assert float(counted.split()[-1]) >= reported["attempts"] + retries, "one count per failure"
