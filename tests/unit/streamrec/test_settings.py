"""Settings come from STREAMREC_* variables and never print secrets."""

from __future__ import annotations

import os
import string
import subprocess
import sys
from pathlib import Path
from unittest import mock
from urllib.parse import quote

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.app import app
from streamrec.recorded_events import (
    RecordedSourceMissing,
    read_recorded,
    require_recorded_source,
)
from streamrec.settings import (
    ExperimentSettings,
    FlowSettings,
    load_settings,
    mask_url,
    masked_settings,
)
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


def test_mask_url_masks_secret_query_parameters_and_keeps_the_others() -> None:
    url = "redis://redis:6379/0?db=2&password=pw1&client_name=app&Api_Key=k2&x-auth-token=t3"
    assert mask_url(url) == (
        "redis://redis:6379/0?db=2&password=****&client_name=app&Api_Key=****&x-auth-token=****"
    )
    assert (
        mask_url("unix:///run/redis.sock?pass%77ord=pw") == "unix:///run/redis.sock?pass%77ord=****"
    )


def test_a_password_with_unencoded_url_characters_is_still_masked() -> None:
    # Base64 passwords (openssl rand -base64) carry /, + and =; some have ? or #.
    assert mask_url("redis://:ab/c+d=?#e@redis:6379/0") == "redis://:****@redis:6379/0"


# Secrets start and end with a marker, so a leak of either end of one shows; nothing
# else in the generated URLs is upper case.
SECRET_CORE = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=0, max_size=12
)
SECRETS = SECRET_CORE.map(lambda core: f"SECRET{core}TERCES")
# Raw in a userinfo password: whatever an operator pastes, short of spaces and '@'
# followed by a host-like tail (that would be a different URL).
RAW_PASSWORD = st.text(
    st.sampled_from(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:/?#%[]"),
    max_size=12,
).map(lambda core: f"SECRET{core}TERCES")
SECRET_PARAMS = st.sampled_from(
    ["password", "Password", "PASSWORD", "token", "auth_token", "secret", "client_secret",
     "api_key", "apikey", "key", "access_key", "ssl_password", "sig", "X-Amz-Credential"]
)  # fmt: skip
PLAIN_PARAMS = st.tuples(
    st.sampled_from(["db", "socket_timeout", "client_name", "health_check_interval"]),
    st.text(string.ascii_lowercase + string.digits, max_size=8),
)


@st.composite
def urls_with_secrets(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A Redis-style URL of any shape and the secrets it carries."""
    scheme = draw(st.sampled_from(["redis", "rediss", "unix"]))
    host = draw(st.sampled_from(["127.0.0.1", "localhost", "redis", "[::1]", "cache.internal"]))
    port = draw(st.sampled_from(["", ":6379", ":16390"]))
    path = draw(st.sampled_from(["", "/0", "/15", "/run/redis.sock"]))
    secrets, userinfo = [], ""
    user = draw(st.sampled_from(["", "default", "app"]))
    password_form = draw(st.sampled_from(["none", "user-only", "encoded", "raw"]))
    if password_form == "user-only" and user:
        userinfo = f"{user}@"
    elif password_form == "encoded":
        secrets.append(draw(SECRETS))
        userinfo = f"{user}:{quote(secrets[-1], safe='')}@"
    elif password_form == "raw":
        secrets.append(draw(RAW_PASSWORD))
        userinfo = f"{user}:{secrets[-1]}@"
    params = [f"{name}={quote(value)}" for name, value in draw(st.lists(PLAIN_PARAMS, max_size=3))]
    for name in draw(st.lists(SECRET_PARAMS, max_size=3)):
        secrets.append(draw(SECRETS))
        safe = draw(st.sampled_from(["", "/:@", "/:@!$'()*+,;=?"]))
        params.insert(draw(st.integers(0, len(params))), f"{name}={quote(secrets[-1], safe=safe)}")
    query = "?" + "&".join(params) if params else ""
    return f"{scheme}://{userinfo}{host}{port}{path}{query}", secrets


def assert_hidden(shown: str, secrets: list[str]) -> None:
    for secret in secrets:
        for form in (secret, quote(secret, safe=""), quote(secret)):
            assert form not in shown
    assert "SECRET" not in shown and "TERCES" not in shown


@settings(max_examples=300, deadline=None)
@given(urls_with_secrets())
def test_no_secret_in_any_url_shape_survives_masking(case: tuple[str, list[str]]) -> None:
    url, secrets = case
    masked = mask_url(url)
    assert_hidden(masked, secrets)
    assert mask_url(masked) == masked
    if not secrets:
        assert masked == url


@settings(max_examples=50, deadline=None)
@given(urls_with_secrets())
def test_streamrec_config_and_masked_settings_never_show_a_url_secret(
    case: tuple[str, list[str]],
) -> None:
    url, secrets = case
    with mock.patch.dict(os.environ, {"STREAMREC_REDIS_URL": url}):
        shown = orjson.dumps(masked_settings(load_settings())).decode()
    assert_hidden(shown, secrets)
    result = CliRunner().invoke(app, ["config"], env={"STREAMREC_REDIS_URL": url})
    assert result.exit_code == 0, result.output
    assert_hidden(result.output, secrets)
    assert orjson.loads(result.output)["redis"]["redis_url"] == mask_url(url)


def test_the_state_dir_holds_recovery_and_the_model_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STREAMREC_STATE_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.flow.recovery_dir == tmp_path / "recovery"
    assert settings.model.store_dir == tmp_path / "models"
    assert load_settings(state_dir=tmp_path / "o").model.store_dir == tmp_path / "o" / "models"


def test_explicit_recovery_and_store_dirs_win_over_the_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STREAMREC_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("STREAMREC_FLOW_RECOVERY_DIR", str(tmp_path / "recovery/partitions"))
    monkeypatch.setenv("STREAMREC_MODEL_STORE_DIR", str(tmp_path / "models"))
    settings = load_settings()
    assert settings.flow.recovery_dir == tmp_path / "recovery/partitions"
    assert settings.model.store_dir == tmp_path / "models"
    passed = load_settings(flow=FlowSettings(recovery_dir=tmp_path / "mine"))
    assert passed.flow.recovery_dir == tmp_path / "mine"


def test_default_state_stays_under_dot_streamrec(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STREAMREC_STATE_DIR", "STREAMREC_FLOW_RECOVERY_DIR", "STREAMREC_MODEL_STORE_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.flow.recovery_dir == Path(".streamrec/recovery")
    assert settings.model.store_dir == Path(".streamrec/models")


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


def test_experiment_arms_read_as_name_share_pairs_or_json_and_unknown_arms_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMREC_EXPERIMENT_ARMS", "online=0.8, canary=0.1,pinned-42=0.1")
    assert ExperimentSettings().arms == {"online": 0.8, "canary": 0.1, "pinned-42": 0.1}
    monkeypatch.setenv("STREAMREC_EXPERIMENT_ARMS", '{"online": 1, "popularity": 1}')
    assert ExperimentSettings().arms == {"online": 1.0, "popularity": 1.0}
    for arms in ("shiny=1", "pinned-x=1", "online=-1", "online=0", "popularity=1"):
        monkeypatch.setenv("STREAMREC_EXPERIMENT_ARMS", arms)
        with pytest.raises(ValueError, match="arm"):
            ExperimentSettings()


def test_a_canary_roll_out_is_refused_at_start_up_without_a_canary_arm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streamrec.settings import load_settings

    monkeypatch.setenv("STREAMREC_DRIFT_ROLLOUT", "canary")
    with pytest.raises(ValueError, match="needs a 'canary' arm"):
        load_settings()
    monkeypatch.setenv("STREAMREC_EXPERIMENT_ARMS", "online=1,canary=0")
    with pytest.raises(ValueError, match="needs a 'canary' arm"):
        load_settings()
    monkeypatch.setenv("STREAMREC_EXPERIMENT_ARMS", "online=0.9,canary=0.1")
    assert load_settings().drift.rollout == "canary"
    monkeypatch.setenv("STREAMREC_EXPERIMENT_CONTROL", "canary")
    with pytest.raises(ValueError, match="cannot be the experiment's control"):
        load_settings()
    monkeypatch.delenv("STREAMREC_EXPERIMENT_CONTROL")
    monkeypatch.setenv("STREAMREC_DRIFT_CANARY_DEADLINE_S", "60")
    with pytest.raises(ValueError, match="must exceed STREAMREC_FLOW_EXPOSURE_HORIZON_S"):
        load_settings()
