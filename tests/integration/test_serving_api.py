"""The serving API against a running ``streamrec serve`` with real Redis, Kafka and registry.

One server (one worker, a bearer token set) serves the whole module; it follows a real
weight registry holding a real (random-weight) model over 400 items.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from online_models.model.recommender import random_weights
from online_models.model.scorer import SessionScorer
from online_models.model.weights import ITEM_TABLE, ModelWeights
from online_models.registry.weight_registry import WeightRegistry
from serving.openapi import (
    ErrorResponse,
    HealthResponse,
    ModelResponse,
    ReadyResponse,
    RecommendResponse,
    openapi_document,
)
from serving.server import WORKER_INDEX_ENV, spawn_server, stop_server
from streamrec.kafka_clients import ensure_topics
from streamrec.redis_keys import RedisKeys
from streamrec.session_features import SessionFeatures, encode_session_features
from streamrec.settings import (
    KafkaSettings,
    ModelSettings,
    RedisSettings,
    ServingSettings,
    Settings,
)
from streamrec.topics import Topics
from tests.conftest import free_port
from tests.kafka_reading import read_topic
from tests.process_env import process_env

pytestmark = pytest.mark.integration
TOKEN = "test-token-123"
N_ITEMS = 400
CATEGORY_OF = {f"item-{n}": ("even" if n % 2 == 0 else "odd") for n in range(N_ITEMS)}


@dataclass
class Served:
    settings: Settings
    registry: WeightRegistry
    client: httpx.Client
    redis: redis.Redis
    keys: RedisKeys
    weights: dict[int, ModelWeights]
    env: dict[str, str]  # the server's environment (STREAMREC_* configure it)


def session(items: tuple[str, ...], bought: tuple[str, ...] = ()) -> dict[str, bytes]:
    features = SessionFeatures(items, len(items), len(bought), bought, {}, 1, 2, 1)
    return encode_session_features(features)


@pytest.fixture(scope="module")
def served(
    broker: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    tag = uuid.uuid4().hex[:10]
    workdir = tmp_path_factory.mktemp("serving")
    settings = Settings(
        state_dir=workdir / "state",
        kafka=KafkaSettings(bootstrap_servers=broker, topic_prefix=f"t{tag}-", partitions=2),
        redis=RedisSettings(redis_url=redis_url, key_prefix=f"test-{tag}"),
        model=ModelSettings(store_dir=workdir / "models"),
        serving=ServingSettings(max_k=50, max_body_bytes=1024),
    )
    ensure_topics(settings.kafka, Topics.from_settings(settings.kafka).all())
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(settings.redis.key_prefix)
    registry = WeightRegistry(settings, client)
    first = registry.publish_snapshot(random_weights(N_ITEMS, settings.model, seed=1), source="t")
    client.hset(keys.session("known"), mapping=session(("item-1", "item-2", "item-3")))
    client.hset(
        keys.session("buyer"),
        mapping=session(("item-5", "item-6"), bought=("item-7", "item-8")),
    )
    client.hset(keys.item_categories, mapping=CATEGORY_OF)
    client.zadd(keys.popular, {"item-10": 9.0, "item-11": 8.0, "item-12": 7.0, "item-13": 6.0})
    port = free_port()
    env = process_env(
        settings,
        STREAMREC_SERVING_AUTH_TOKEN=TOKEN,
        STREAMREC_SERVING_WORKERS="1",
        STREAMREC_SERVING_MAX_K="50",
        STREAMREC_SERVING_MAX_BODY_BYTES="1024",
        STREAMREC_SERVING_POLL_INTERVAL_S="1.5",
        STREAMREC_SERVING_IMPRESSION_BATCH_MS="10",
    )
    server = spawn_server(env, port, workdir / "server.log")
    http = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    weights = {first.version: registry.load(first.version)}
    wait_until(lambda: http.get("/readyz").status_code == 200, "server ready")
    try:
        yield Served(settings, registry, http, client, keys, weights, env)
    finally:
        http.close()
        assert stop_server(server) == 0, "graceful shutdown exits cleanly"
        doomed = list(client.scan_iter(f"{settings.redis.key_prefix}:*"))
        if doomed:
            client.delete(*doomed)


def wait_until(check, what: str, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def reference_top_k(
    served: Served, version: int, items: tuple[str, ...], k: int, excluded: set[str]
) -> list[str]:
    """Top-K computed directly from the model, without the server."""
    weights = served.weights.get(version) or served.registry.load(version)
    scorer = SessionScorer.from_weights(weights, served.settings.model)
    scores = scorer.score(items)
    order = np.argsort(-scores, kind="stable")
    return [scorer.item_ids[r] for r in order if scorer.item_ids[r] not in excluded][:k]


def test_top_k_matches_a_reference_computed_from_the_model(served: Served) -> None:
    response = served.client.get("/recommend", params={"session_id": "known", "k": 10})
    assert response.status_code == 200
    body = RecommendResponse.model_validate(response.json())
    assert body.fallback is None and body.model_version is not None
    expected = reference_top_k(
        served, body.model_version, ("item-1", "item-2", "item-3"), 10, set()
    )
    assert [item.item_id for item in body.items] == expected
    scores = [item.score for item in body.items]
    assert scores == sorted(scores, reverse=True)


def test_bought_items_are_excluded_unless_asked_to_keep_them(served: Served) -> None:
    answer = served.client.get("/recommend", params={"session_id": "buyer", "k": N_ITEMS // 8})
    body = RecommendResponse.model_validate(answer.json())
    ids = [item.item_id for item in body.items]
    assert not {"item-7", "item-8"} & set(ids)
    assert body.model_version is not None
    expected = reference_top_k(
        served, body.model_version, ("item-5", "item-6"), N_ITEMS // 8, {"item-7", "item-8"}
    )
    assert ids == expected
    keep = served.client.post(
        "/recommend", json={"session_id": "buyer", "k": N_ITEMS // 8, "exclude_bought": False}
    )
    kept = [item["item_id"] for item in keep.json()["items"]]
    assert len(kept) == N_ITEMS // 8


def test_post_filters_by_category_and_excludes_items(served: Served) -> None:
    response = served.client.post(
        "/recommend",
        json={"session_id": "known", "k": 5, "categories": ["odd"], "exclude_items": ["item-1"]},
    )
    assert response.status_code == 200
    ids = [item["item_id"] for item in response.json()["items"]]
    assert len(ids) == 5
    assert all(CATEGORY_OF[item_id] == "odd" for item_id in ids)
    assert "item-1" not in ids


def test_unknown_session_gets_popular_items_marked_as_fallback(served: Served) -> None:
    response = served.client.get("/recommend", params={"session_id": "never-seen", "k": 3})
    body = RecommendResponse.model_validate(response.json())
    assert body.fallback == "popular" and body.model_version is None
    assert [item.item_id for item in body.items] == ["item-10", "item-11", "item-12"]


JSON_HEADERS = {"content-type": "application/json"}
BIG_BODY = b'{"session_id":"' + b"x" * 2000 + b'"}'


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "error"),
    [
        ("GET", "/recommend", None, {}, 400, "missing_parameter"),
        ("GET", "/recommend?session_id=s&k=0", None, {}, 400, "invalid_k"),
        ("GET", "/recommend?session_id=s&k=51", None, {}, 400, "invalid_k"),
        ("GET", "/recommend?session_id=s&k=abc", None, {}, 400, "invalid_k"),
        ("GET", "/recommend?session_id=a%20b", None, {}, 400, "invalid_session_id"),
        ("GET", "/recommend?session_id=s&bogus=1", None, {}, 400, "unknown_parameter"),
        ("GET", "/recommend?session_id=s&session_id=t", None, {}, 400, "repeated_parameter"),
        ("GET", "/recommend?session_id=s&exclude_bought=x", None, {}, 400,
         "invalid_exclude_bought"),
        ("POST", "/recommend", b"{", JSON_HEADERS, 400, "malformed_json"),
        ("POST", "/recommend", b'{"session_id":"s","k":"3"}', JSON_HEADERS, 400, "invalid_k"),
        ("POST", "/recommend", b'{"session_id":"s"}', {"content-type": "text/plain"}, 415,
         "unsupported_media_type"),
        ("POST", "/recommend", BIG_BODY, JSON_HEADERS, 413, "body_too_large"),
        ("GET", "/nowhere", None, {}, 404, "not_found"),
        ("DELETE", "/recommend", None, {}, 405, "method_not_allowed"),
    ],
)  # fmt: skip
def test_every_invalid_input_gets_its_4xx(
    served: Served,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    error: str,
) -> None:
    response = served.client.request(method, path, content=body, headers=headers)
    assert response.status_code == status
    problem = ErrorResponse.model_validate(response.json())
    assert problem.error == error and problem.detail


def test_requests_without_the_token_are_refused(served: Served) -> None:
    base = served.client.base_url
    with httpx.Client(base_url=base, timeout=10) as anonymous:
        for path in ("/recommend?session_id=known", "/model"):
            response = anonymous.get(path)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
        for header in ("Bearer x", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x"):
            wrong = anonymous.get("/recommend?session_id=known", headers={"Authorization": header})
            assert wrong.status_code == 401, header
        lower = anonymous.get("/model", headers={"Authorization": f"bearer {TOKEN}"})
        assert lower.status_code == 200, "the scheme is case-insensitive (RFC 7235)"
        assert anonymous.post("/recommend", json={"session_id": "known"}).status_code == 401
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert anonymous.get(path).status_code == 200, path


def test_openapi_is_served_and_responses_match_it(served: Served) -> None:
    document = served.client.get("/openapi.json").json()
    assert document == orjson.loads(
        orjson.dumps(
            openapi_document(ServingSettings(max_k=50, max_body_bytes=1024, auth_token=TOKEN))
        )
    )
    HealthResponse.model_validate(served.client.get("/healthz").json())
    ReadyResponse.model_validate(served.client.get("/readyz").json())
    model = ModelResponse.model_validate(served.client.get("/model").json())
    assert model.version is not None and model.items == N_ITEMS and model.source
    assert model.age_s is not None and model.age_s >= 0
    metrics = served.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "streamrec_serving_requests_total" in metrics.text


def publish_perturbed(served: Served, seed: int) -> int:
    base = served.registry.load()
    tensors = dict(base.tensors)
    noise = np.random.default_rng(seed).standard_normal(tensors[ITEM_TABLE].shape) * 0.05
    tensors[ITEM_TABLE] = (tensors[ITEM_TABLE] + noise).astype(np.float32)
    weights = ModelWeights(base.version, base.shape, base.item_ids, tensors)
    published = served.registry.publish_snapshot(weights, source="test")
    served.weights[published.version] = served.registry.load(published.version)
    return published.version


def failed_versions(served: Served) -> list[int]:
    return [failed["version"] for failed in served.client.get("/model").json()["failed_versions"]]


def serving_version(served: Served) -> int | None:
    return served.client.get("/model").json()["version"]


def test_no_request_fails_while_versions_are_swapped(served: Served) -> None:
    stop = threading.Event()
    statuses: list[int] = []
    seen: list[list[int]] = [[], [], []]

    def hammer(versions: list[int]) -> None:
        with httpx.Client(base_url=served.client.base_url, headers=served.client.headers) as c:
            while not stop.is_set():
                r = c.get("/recommend", params={"session_id": "known", "k": 20})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["model_version"])

    threads = [threading.Thread(target=hammer, args=(versions,)) for versions in seen]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(seen), "every client has an answer before the swaps")
        published = [publish_perturbed(served, seed) for seed in range(5)]
        wait_until(lambda: serving_version(served) == published[-1], "last version served")
        wait_until(lambda: seen[0][-1:] == published[-1:], "clients see it")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses and set(statuses) == {200}
    for versions in seen:
        assert versions == sorted(versions), "a client never goes back to an older version"
    assert len(set(seen[0])) >= 2, "the swaps happened while requests were running"


def test_a_corrupt_version_is_skipped_while_the_old_one_keeps_serving(served: Served) -> None:
    good = publish_perturbed(served, 99)
    wait_until(lambda: serving_version(served) == good, "good version served")
    weights = served.registry.load(good)
    bad = served.registry.publish_snapshot(weights, source="test", make_current=False).version
    info = served.registry.info(bad)
    assert info is not None
    blob = Path(served.settings.model.store_dir) / info.file
    blob.write_bytes(b"\x00" * 64 + blob.read_bytes()[64:])  # bit rot: sha256 no longer matches
    served.registry.set_current(bad)
    wait_until(lambda: bad in failed_versions(served), "corrupt version reported")
    assert serving_version(served) == good
    response = served.client.get("/recommend", params={"session_id": "known", "k": 5})
    assert response.status_code == 200 and response.json()["model_version"] == good


def test_impressions_arrive_on_kafka(served: Served) -> None:
    request_ids = set()
    shown: dict[str, list[str]] = {}
    for _ in range(3):
        body = served.client.get("/recommend", params={"session_id": "known", "k": 4}).json()
        request_ids.add(body["request_id"])
        shown[body["request_id"]] = [item["item_id"] for item in body["items"]]
    topic = Topics.from_settings(served.settings.kafka).impressions
    found: dict[str, dict] = {}
    deadline = time.monotonic() + 30
    while request_ids - set(found) and time.monotonic() < deadline:
        for message in read_topic(served.settings.kafka, topic, 10_000, timeout_s=1):
            event = orjson.loads(message.value())
            found[event["request_id"]] = event
    assert request_ids <= set(found)
    for request_id in request_ids:
        event = found[request_id]
        assert event["type"] == "impression" and event["session_id"] == "known"
        assert event["items"] == shown[request_id]
        assert isinstance(event["model_version"], int)


def model_state(served: Served) -> tuple[int | None, str | None]:
    body = served.client.get("/model").json()
    return body["version"], body["source"]


def test_versions_arrive_by_pubsub_and_by_polling_without_a_message(served: Served) -> None:
    announced = publish_perturbed(served, 7)
    wait_until(lambda: model_state(served)[0] == announced, "published version served")
    assert model_state(served)[1] == "pubsub"
    weights = served.registry.load(announced)
    silent = served.registry.publish_snapshot(weights, source="test", make_current=False)
    served.redis.set(served.keys.model_current, silent.version)  # pointer moved, no message
    wait_until(lambda: model_state(served)[0] == silent.version, "polled version served")
    assert model_state(served)[1] == "poll"


def test_a_second_server_on_the_same_port_exits_and_the_first_keeps_serving(
    served: Served,
) -> None:
    port = str(served.client.base_url.port)
    # Another config on the same port (no token): it must not take part of the traffic.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    second = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve"],
        env=env | {"STREAMREC_SERVING_PORT": port},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, stderr = second.communicate(timeout=30)
    finally:
        stop_server(second)
    assert second.returncode == 1
    (line,) = [orjson.loads(row) for row in stderr.splitlines() if b"serving_port_in_use" in row]
    assert line["level"] == "error" and line["port"] == int(port)
    assert b"serving_started" not in stderr
    for _ in range(20):  # spread over connections: every one reaches the first server
        with httpx.Client(base_url=served.client.base_url, timeout=5) as fresh:
            assert fresh.get("/model").status_code == 401, "the first (token) server answers"


def test_an_unreadable_session_hash_falls_back_instead_of_failing(served: Served) -> None:
    served.redis.hset(served.keys.session("garbled"), mapping={"items": "not json"})
    response = served.client.get("/recommend", params={"session_id": "garbled", "k": 2})
    assert response.status_code == 200
    assert response.json()["fallback"] == "popular"


def sample_values(served: Served) -> dict[str, float]:
    """This (one-worker) server's unlabelled samples by name, from ``/metrics``."""
    text = served.client.get("/metrics").text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_explain_requests_are_counted_apart_from_the_latency_histogram(served: Served) -> None:
    latency = "streamrec_serving_request_duration_seconds_count"
    explains = "streamrec_serving_explain_requests_total"
    before = sample_values(served)
    for explain in ("true", "true", "false"):
        params = {"session_id": "known", "k": 3, "explain": explain}
        assert served.client.get("/recommend", params=params).status_code == 200
    after = sample_values(served)
    assert after[explains] - before.get(explains, 0.0) == 2
    assert after[latency] - before[latency] == 1, "only the plain request is timed"


def test_every_worker_of_a_server_gets_its_own_index(served: Served, tmp_path: Path) -> None:
    """The index seeds exploration per worker: two workers must not both be worker 0."""
    port = free_port()
    env = {k: v for k, v in served.env.items() if k != WORKER_INDEX_ENV}
    server = spawn_server(env | {"STREAMREC_SERVING_WORKERS": "2"}, port, tmp_path / "two.log")
    seen: set[int] = set()
    try:

        def both_seen() -> bool:
            # A fresh connection per call, so the kernel may hand it to either worker.
            with httpx.Client(headers=served.client.headers, timeout=5) as fresh:
                seen.add(fresh.get(f"http://127.0.0.1:{port}/model").json()["worker_index"])
            return seen == {0, 1}

        wait_until(both_seen, "both workers answer /model")
    finally:
        assert stop_server(server) == 0
    assert seen == {0, 1}
