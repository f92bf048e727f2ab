"""``streamrec model canary`` refuses, on one line with exit status 2, what it cannot do."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from cli.app import app

runner = CliRunner()


def no_canary(*_: Any) -> dict[str, Any]:
    return {"running": False, "canary_version": 3, "verdict": "promoted"}


@pytest.mark.parametrize("flag", ["--drop", "--promote"])
def test_ending_a_canary_when_none_runs_is_refused_on_one_line(
    flag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("online_models.oncall.canary_report", no_canary)

    result = runner.invoke(app, ["model", "canary", flag])

    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "refused: no canary is rolled out" in line


def test_promote_and_drop_together_are_refused() -> None:
    result = runner.invoke(app, ["model", "canary", "--promote", "--drop"])
    assert result.exit_code == 2
    assert "exclude each other" in result.output


def test_the_view_prints_one_json_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("online_models.oncall.canary_report", no_canary)
    result = runner.invoke(app, ["model", "canary", "--json"])
    assert result.exit_code == 0, result.output
    assert result.output == '{"running":false,"canary_version":3,"verdict":"promoted"}\n'
