"""Settings come from STREAMREC_* variables and never print secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streamrec.recorded_events import (
    RecordedSourceMissing,
    read_recorded,
    require_recorded_source,
)
from streamrec.settings import load_settings, mask_url, masked_settings
from tests.conftest import REPO_ROOT, SAMPLE_DIR


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


def test_data_dir_defaults_to_the_shared_sample_beside_the_repo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STREAMREC_DATA_DIR", raising=False)
    data_dir = load_settings().data_dir
    # Relative to the working directory, not to where the package is installed.
    assert data_dir == Path("../shared/data/yoochoose-sample")
    assert (REPO_ROOT / data_dir).resolve() == SAMPLE_DIR.resolve()


def test_data_dir_follows_streamrec_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STREAMREC_DATA_DIR", str(tmp_path / "events"))
    assert load_settings().data_dir == tmp_path / "events"


def test_missing_source_error_names_the_path_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-sample"
    with pytest.raises(RecordedSourceMissing) as raised:
        require_recorded_source(missing)
    assert str(missing) in str(raised.value)
    assert "STREAMREC_DATA_DIR" in str(raised.value)
    assert "streamrec replay SOURCE" in str(raised.value)
    assert isinstance(raised.value, FileNotFoundError)


def test_a_directory_without_the_yoochoose_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecordedSourceMissing, match="yoochoose-clicks.dat"):
        require_recorded_source(tmp_path)
    (tmp_path / "yoochoose-clicks.dat.gz").touch()
    with pytest.raises(RecordedSourceMissing, match="yoochoose-buys.dat"):
        require_recorded_source(tmp_path)
    (tmp_path / "yoochoose-buys.dat").touch()
    assert require_recorded_source(tmp_path) == tmp_path


def test_a_relative_source_is_shown_resolved(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecordedSourceMissing) as raised:
        require_recorded_source(Path("../elsewhere"))
    assert f"../elsewhere (= {(tmp_path.parent / 'elsewhere').resolve()})" in str(raised.value)


def test_read_recorded_refuses_a_missing_source_before_reading(tmp_path: Path) -> None:
    with pytest.raises(RecordedSourceMissing):
        read_recorded(tmp_path / "events.jsonl")


def test_a_missing_data_dir_ends_the_command_with_one_sentence(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    env = dict(os.environ) | {"STREAMREC_DATA_DIR": str(missing)}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "replay"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert str(missing) in done.stderr
    assert "STREAMREC_DATA_DIR" in done.stderr
    assert "Traceback" not in done.stderr
