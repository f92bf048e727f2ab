"""Serving when Redis fails: an outage is a fast 503 with its reason, bad data is a fallback.

Bad data (a session hash the flow did not write, a key of the wrong type) is an unknown
session: answered from popular items with 200, counted and logged with the session id but
never its content. An outage (Redis hung or refusing connections) is a 503 within the
timeout that says which.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from pydantic import SecretStr
from starlette.testclient import TestClient

from serving.app import create_app
from streamrec.redis_keys import RedisKeys
from streamrec.session_features import SessionFeatures, encode_session_features
from streamrec.settings import RedisSettings, ServingSettings, Settings
from tests.unit.serving.test_hot_swap import ITEMS, FakeRegistry, FakeScorer
from tests.unit.serving.test_openapi import NullProducer


@pytest.fixture
def silent_redis_url() -> Iterator[str]:
    """A port that accepts connections and never answers (a hung Redis)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


@pytest.fixture
def closed_redis_url() -> str:
    """A port nothing listens on (Redis down: connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{probe.getsockname()[1]}/0"


def app_on(redis_url: str, key_prefix: str = "unused") -> TestClient:
    settings = Settings(
        redis=RedisSettings(
            redis_url=SecretStr(redis_url), key_prefix=key_prefix, redis_timeout_s=0.2
        ),
        serving=ServingSettings(redis_timeout_s=0.1, shutdown_grace_s=0.5),
    )
    app = create_app(
        settings,
        registry=FakeRegistry(current=1),
        build_scorer=lambda weights, previous: FakeScorer(weights.version, ITEMS),
        producer=NullProducer(),  # type: ignore[arg-type]
    )
    return TestClient(app)


def test_a_hung_redis_gives_503_within_the_timeout(silent_redis_url: str) -> None:
    with app_on(silent_redis_url) as client:
        started = time.monotonic()
        response = client.get("/recommend", params={"session_id": "s1"})
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert response.json()["error"] == "feature_store_unavailable"
        assert "did not answer in time" in response.json()["detail"]
        assert response.headers["retry-after"] == "1"
        assert elapsed < 2.0
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] is False
        assert "streamrec_serving_redis_errors_total 1.0" in client.get("/metrics").text


def test_a_redis_that_refuses_connections_gives_a_fast_503_saying_so(
    closed_redis_url: str,
) -> None:
    with app_on(closed_redis_url) as client:
        started = time.monotonic()
        response = client.get("/recommend", params={"session_id": "s1"})
        assert time.monotonic() - started < 2.0
        assert response.status_code == 503
        assert response.json()["detail"] == "Redis connection failed"


@pytest.fixture
def data_app(redis_url: str) -> Iterator[tuple[TestClient, RedisKeys, redis.Redis]]:
    """The app on the real Redis under a private prefix, with popular items written."""
    keys = RedisKeys(f"test-{uuid.uuid4().hex[:10]}")
    client = redis.Redis.from_url(redis_url)
    client.zadd(keys.popular, {"i8": 9.0, "i9": 8.0})
    try:
        with app_on(redis_url, keys.prefix) as http:
            yield http, keys, client
    finally:
        doomed = list(client.scan_iter(f"{keys.prefix}:*"))
        if doomed:
            client.delete(*doomed)


def unreadable(http: TestClient, key: str, reason: str) -> float:
    metrics = http.get("/metrics").text
    line = f'streamrec_serving_unreadable_keys_total{{key="{key}",reason="{reason}"}}'
    values = [float(row.split()[-1]) for row in metrics.splitlines() if row.startswith(line)]
    return values[0] if values else 0.0


GOOD = encode_session_features(SessionFeatures(("i1", "i2"), 2, 0, (), {}, 1, 2, 1))
SECRET = b"secret-content"


def write_bad_session(client: redis.Redis, key: str, kind: str) -> None:
    """A session key the flow did not write: a corrupt hash, or another Redis type."""
    if kind == "list of lists":
        client.hset(key, mapping=GOOD | {"items": b'[["i1"],["i2"]]'})
    elif kind == "not json":
        client.hset(key, mapping=GOOD | {"items": SECRET})
    elif kind == "a string":
        client.set(key, SECRET)
    else:
        client.rpush(key, SECRET)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("list of lists", "corrupt"),
        ("not json", "corrupt"),
        ("a string", "wrong_type"),
        ("a list", "wrong_type"),
    ],
)
def test_a_session_key_with_bad_data_falls_back_to_popular_items(
    data_app: tuple[TestClient, RedisKeys, redis.Redis],
    caplog: pytest.LogCaptureFixture,
    kind: str,
    reason: str,
) -> None:
    http, keys, client = data_app
    write_bad_session(client, keys.session("bad-1"), kind)
    with caplog.at_level(logging.WARNING, logger="serving.app"):
        response = http.get("/recommend", params={"session_id": "bad-1", "k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["fallback"] == "popular"
    assert [item["item_id"] for item in body["items"]] == ["i8", "i9"]
    assert unreadable(http, "session", reason) == 1
    logged = [r for r in caplog.records if r.getMessage() == "redis_key_unreadable"]
    assert len(logged) == 1
    fields = logged[0].fields  # type: ignore[attr-defined]
    assert fields["session_id"] == "bad-1" and fields["reason"] == reason
    assert SECRET.decode() not in repr(fields) and "i1" not in repr(fields), "no content"
    assert "streamrec_serving_redis_errors_total 0.0" in http.get("/metrics").text


def test_a_popular_key_of_the_wrong_type_answers_empty_instead_of_503(
    data_app: tuple[TestClient, RedisKeys, redis.Redis],
) -> None:
    http, keys, client = data_app
    client.delete(keys.popular)
    client.set(keys.popular, b"not a zset")
    response = http.get("/recommend", params={"session_id": "unknown", "k": 2})
    assert response.status_code == 200
    assert response.json()["fallback"] == "popular" and response.json()["items"] == []
    assert unreadable(http, "popular", "wrong_type") == 1
