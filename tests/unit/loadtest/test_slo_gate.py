"""The SLO gate: file over defaults, every SLO an upper bound, no data fails."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from loadtest.slo_gate import check_slos, load_slo_file
from streamrec.settings import SloSettings

MEASURED = {
    "freshness_p99_ms": 20.0,
    "event_to_weights_p99_ms": 900.0,
    "serving_p99_ms": 4.0,
    "serving_error_rate": 0.0,
    "dlq_rate": 0.0,
    "consumer_lag": 10,
}


def test_file_overrides_some_targets(tmp_path: Path) -> None:
    path = tmp_path / "slo.yaml"
    path.write_text("serving_p99_ms: 25\nconsumer_lag: 5\n")
    targets = load_slo_file(path, SloSettings())
    assert targets.serving_p99_ms == 25
    assert targets.consumer_lag == 5
    assert targets.freshness_p99_ms == SloSettings().freshness_p99_ms


def test_unknown_or_invalid_slo_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "slo.yaml"
    path.write_text("latency: 3\n")
    with pytest.raises(ValueError, match="unknown SLOs"):
        load_slo_file(path, SloSettings())
    path.write_text("serving_p99_ms: fast\n")
    with pytest.raises(ValueError, match="serving_p99_ms"):
        load_slo_file(path, SloSettings())


def test_all_pass_when_under_targets_and_one_breach_fails() -> None:
    results = check_slos(SloSettings(), MEASURED)
    assert all(r.passed for r in results)
    breached = check_slos(SloSettings(), MEASURED | {"serving_p99_ms": 6.0})
    assert [r.name for r in breached if not r.passed] == ["serving_p99_ms"]


def test_missing_measurement_fails() -> None:
    results = check_slos(SloSettings(), MEASURED | {"dlq_rate": math.nan})
    assert [r.name for r in results if not r.passed] == ["dlq_rate"]
    assert not check_slos(SloSettings(), {})[0].passed
