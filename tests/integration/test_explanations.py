"""Explanations end to end: the real flow writes a session from real click events, a real
server explains its answer, and ``streamrec explain`` prints the same.

The explanation must name the events the flow stored (their ids and event times, once
each although one was sent twice) and the version that served, and the parts of every
model score must add up to the score in the answer.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from online_models.model.recommender import random_weights
from online_models.registry.weight_registry import WeightRegistry
from serving.openapi import RecommendResponse
from serving.server import spawn_server, stop_server
from streamrec.events import Event
from streamrec.settings import Settings
from tests.conftest import free_port
from tests.integration.test_feature_flow import produce_events, run_flow_in_process
from tests.process_env import process_env

pytestmark = pytest.mark.integration
SESSION = "explained-1"
TOKEN = "explain-token"


def click(event_id: str, ts: int, item_id: str) -> Event:
    return Event(event_id, "click", SESSION, ts, item_id)


def test_an_explanation_names_the_sessions_real_events_and_the_serving_version(
    settings: Settings, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    clicks = [
        click("ev-one", now - 30_000, "item-3"),
        click("ev-two", now - 20_000, "item-7"),
        click("ev-three", now - 10_000, "item-12"),
    ]
    produce_events(settings, [*clicks, clicks[1]])  # the second click sent twice
    run_flow_in_process(settings)
    client = redis.Redis.from_url(settings.redis.redis_url.get_secret_value())
    version = (
        WeightRegistry(settings, client)
        .publish_snapshot(random_weights(50, settings.model, seed=2), source="test")
        .version
    )

    port = free_port()
    env = process_env(
        settings,
        STREAMREC_SERVING_AUTH_TOKEN=TOKEN,
        STREAMREC_SERVING_WORKERS="1",
        STREAMREC_SERVING_PORT=str(port),
    )
    server = spawn_server(env, port, tmp_path / "server.log")
    http = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    try:
        deadline = time.monotonic() + 60
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the server did not load the model"
            time.sleep(0.05)
        plain = http.get("/recommend", params={"session_id": SESSION, "k": 5}).json()
        assert "explanation" not in plain
        got = http.get("/recommend", params={"session_id": SESSION, "k": 5, "explain": "true"})
        posted = http.post("/recommend", json={"session_id": SESSION, "k": 5, "explain": True})
        printed = subprocess.run(
            [sys.executable, "-m", "cli", "explain", SESSION, "--k", "5", "--json"],
            env=env,
            capture_output=True,
            check=True,
            timeout=60,
        )
    finally:
        http.close()
        assert stop_server(server) == 0

    for body in (got.json(), posted.json(), orjson.loads(printed.stdout)):
        RecommendResponse.model_validate(body)
        explanation = body["explanation"]
        assert body["model_version"] == explanation["model_version"] == version
        assert [(e["event_id"], e["ts"], e["item_id"]) for e in explanation["events"]] == [
            (c.event_id, c.ts, c.item_id) for c in clicks
        ]
        assert [item["item_id"] for item in explanation["items"]] == [
            item["item_id"] for item in body["items"]
        ]
        by_item = {item["item_id"]: item for item in explanation["items"]}
        for item in body["items"]:
            explained = by_item[item["item_id"]]
            parts = (
                explained["session_match"]
                + explained["item_bias"]
                + explained["session_repeat"]
                + explained["co_visitation"]
            )
            assert parts == pytest.approx(item["score"], rel=1e-5, abs=1e-4)
        # The session's own items rank first, each lifted most by its own click.
        for clicked in clicks:
            assert by_item[clicked.item_id]["top_event_id"] == clicked.event_id
