"""Settings come from STREAMREC_* variables and never print secrets."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from streamrec.settings import load_settings, mask_url, masked_settings


def test_groups_read_their_own_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("STREAMREC_FLOW_HISTORY_LEN", "7")
    monkeypatch.setenv("STREAMREC_LEARNER_BATCH_SIZE", "64")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.flow.history_len == 7
    assert settings.learner.batch_size == 64


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_FLOW_HISTORY_LEN", "0")
    with pytest.raises(ValueError, match="history_len"):
        load_settings()


def test_sasl_settings_reach_librdkafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMREC_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("STREAMREC_SASL_USERNAME", "rec")
    monkeypatch.setenv("STREAMREC_SASL_PASSWORD", "hunter2")
    config = load_settings().kafka.client_config()
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.password"] == "hunter2"


def test_secrets_are_masked_when_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_REDIS_URL", "redis://:s3cret@redis:6379/0")
    monkeypatch.setenv("STREAMREC_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("STREAMREC_SERVING_AUTH_TOKEN", "tok-123")
    shown = orjson.dumps(masked_settings(load_settings())).decode()
    for secret in ("s3cret", "hunter2", "tok-123"):
        assert secret not in shown
    assert "redis://:****@redis:6379/0" in shown


def test_config_command_prints_effective_configuration() -> None:
    env = dict(os.environ) | {"STREAMREC_SERVING_PORT": "8123", "STREAMREC_SASL_PASSWORD": "pw9"}
    out = subprocess.run(
        [sys.executable, "-m", "cli", "config"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    data = orjson.loads(out)
    assert data["serving"]["port"] == 8123
    assert "pw9" not in out


def test_mask_url_leaves_urls_without_password_alone() -> None:
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert mask_url("redis://user:pw@h:1/2") == "redis://user:****@h:1/2"
