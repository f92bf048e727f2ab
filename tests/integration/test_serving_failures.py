"""Serving when Redis does not answer: a clear 503 within the timeout, never a hang."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from serving.app import create_app
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


def test_a_hung_redis_gives_503_within_the_timeout(silent_redis_url: str) -> None:
    settings = Settings(
        redis=RedisSettings(
            redis_url=SecretStr(silent_redis_url), key_prefix="unused", redis_timeout_s=0.2
        ),
        serving=ServingSettings(redis_timeout_s=0.1, shutdown_grace_s=0.5),
    )
    app = create_app(
        settings,
        registry=FakeRegistry(current=1),
        build_scorer=lambda weights: FakeScorer(weights.version, ITEMS),
        producer=NullProducer(),  # type: ignore[arg-type]
    )
    with TestClient(app) as client:
        started = time.monotonic()
        response = client.get("/recommend", params={"session_id": "s1"})
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert response.json()["error"] == "feature_store_unavailable"
        assert response.headers["retry-after"] == "1"
        assert elapsed < 2.0
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] is False
        assert "streamrec_serving_redis_errors_total 1.0" in client.get("/metrics").text
