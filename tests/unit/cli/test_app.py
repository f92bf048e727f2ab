"""The ``streamrec`` command tree: every group registered once, overrides passed as settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli.app import app
from streamrec.settings import ServingSettings
from tests.conftest import free_port

runner = CliRunner()


def command_names(group: typer.Typer) -> set[str]:
    command = typer.main.get_command(group)
    assert isinstance(command, typer.core.TyperGroup)
    return set(command.list_commands(typer.Context(command)))


def test_every_stage_and_group_is_registered() -> None:
    assert command_names(app) == {
        "config", "up", "replay", "sample", "generate", "flow", "train", "learn", "evaluate",
        "drift", "finetune", "serve", "demo", "loadtest", "chaos", "services", "alerts", "model",
        "bench", "experiments", "explain",
    }  # fmt: skip


def test_bench_has_one_command_per_part() -> None:
    bench = typer.main.get_command(app).get_command(
        typer.Context(typer.main.get_command(app)), "bench"
    )
    assert set(bench.list_commands(typer.Context(bench))) == {
        "events", "flow", "learner", "serving", "drift"
    }  # fmt: skip


def test_serve_passes_its_overrides_as_settings_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[ServingSettings] = []
    monkeypatch.setattr("serving.server.serve", started.append)
    environment = dict(os.environ)

    result = runner.invoke(app, ["serve", "--port", "18123", "--workers", "3"])

    assert result.exit_code == 0, result.output
    assert [(s.port, s.workers) for s in started] == [(18123, 3)]
    assert dict(os.environ) == environment


def test_serve_without_overrides_keeps_the_configured_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[ServingSettings] = []
    monkeypatch.setattr("serving.server.serve", started.append)
    monkeypatch.setenv("STREAMREC_SERVING_PORT", "18124")

    assert runner.invoke(app, ["serve"]).exit_code == 0
    assert started[0].port == 18124
    assert started[0].workers == ServingSettings().workers


def test_services_up_refuses_a_remote_broker_it_cannot_start_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STREAMREC_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("STREAMREC_BOOTSTRAP_SERVERS", f"192.0.2.1:{free_port()}")

    result = runner.invoke(app, ["services", "up"])

    assert result.exit_code == 2
    assert "error:" in result.output and "is not local" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
