"""`streamrec services up|down|status` on a free port: idempotent, stops only its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis

from streamrec.topics import ALL_TOPICS
from tests.conftest import free_port


def run_cli(*args: str, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return orjson.loads(out.stdout.strip().splitlines()[-1])


def test_services_up_down_status(tmp_path: Path, redis_url: str) -> None:
    env = dict(os.environ)
    env |= {
        "STREAMREC_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "STREAMREC_REDIS_URL": redis_url,
        "STREAMREC_STATE_DIR": str(tmp_path / "state"),
        "STREAMREC_TOPIC_PREFIX": "svc-",
    }
    before = run_cli("services", "status", "--json", env=env)
    assert before["broker_ok"] is False and before["redis_ok"] is True

    up = run_cli("services", "up", env=env)
    assert up["broker_ok"] and up["broker_managed"] and not up["redis_managed"]
    again = run_cli("services", "up", env=env)
    assert again["broker_ok"]
    pid = (tmp_path / "state" / "run" / "broker.pid").read_text()

    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": env["STREAMREC_BOOTSTRAP_SERVERS"]})
    listed = admin.list_topics(timeout=5).topics
    assert {f"svc-{name}" for name in ALL_TOPICS} <= set(listed)
    assert (tmp_path / "state" / "run" / "broker.pid").read_text() == pid

    down = run_cli("services", "down", env=env)
    assert down["stopped"] == ["broker"]
    assert redis.Redis.from_url(redis_url).ping()
    after = run_cli("services", "status", "--json", env=env)
    assert after["broker_ok"] is False
    assert run_cli("services", "down", env=env)["stopped"] == []


def test_services_start_private_redis_when_none_answers(tmp_path: Path) -> None:
    env = dict(os.environ)
    port = free_port()
    env |= {
        "STREAMREC_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "STREAMREC_STATE_DIR": str(tmp_path / "state"),
    }
    up = run_cli("services", "up", env=env)
    assert up["redis_ok"] and up["redis_managed"]
    client = redis.Redis(port=port)
    client.set("streamrec-test", "1")
    assert client.get("streamrec-test") == b"1"
    assert sorted(run_cli("services", "down", env=env)["stopped"]) == ["broker", "redis"]
    assert run_cli("services", "status", "--json", env=env)["redis_ok"] is False


def test_services_up_gives_its_redis_the_decoded_password_of_the_url(
    tmp_path: Path, broker: str
) -> None:
    port = free_port()
    url = f"redis://:p%40ss%2Fw0rd@127.0.0.1:{port}/0"
    env = dict(os.environ) | {
        "STREAMREC_BOOTSTRAP_SERVERS": broker,
        "STREAMREC_TOPIC_PREFIX": f"svc-{port}-",
        "STREAMREC_REDIS_URL": url,
        "STREAMREC_STATE_DIR": str(tmp_path / "state"),
    }
    try:
        up = run_cli("services", "up", env=env)
        assert up["redis_ok"] and up["redis_managed"] and not up["broker_managed"]
        assert "p%40ss" not in str(up) and "p@ss" not in str(up)
        assert redis.Redis.from_url(url).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, password="p%40ss%2Fw0rd").ping()
    finally:
        assert run_cli("services", "down", env=env)["stopped"] == ["redis"]
