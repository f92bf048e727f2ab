"""SLO gate: compare what a load test measured with targets, pass or fail.

Targets come from an SLO file (YAML, the fields of ``SloSettings``; any subset, the rest
from the environment/defaults). Every SLO is an upper bound. A measurement that is
missing (NaN: nothing observed) fails its SLO: a gate that cannot see must not pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError
from rich.table import Table

from streamrec.settings import SloSettings

# SLO field -> (what it measures, unit) for the report.
SLO_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "freshness_p99_ms": ("feature freshness p99 (event produced -> Redis write acked)", "ms"),
    "event_to_weights_p99_ms": ("event-to-weights p99 (click produced -> version current)", "ms"),
    "serving_p99_ms": ("serving latency p99 at the driven rate", "ms"),
    "serving_error_rate": ("serving error rate", "ratio"),
    "dlq_rate": ("dead-letter rate (rejected / consumed)", "ratio"),
    "consumer_lag": ("consumer lag at the end of the run", "messages"),
}


@dataclass(frozen=True, slots=True)
class SloResult:
    name: str
    target: float
    measured: float
    passed: bool

    def as_dict(self) -> dict[str, object]:
        measured = None if math.isnan(self.measured) else round(self.measured, 4)
        return {
            "slo": self.name,
            "target": self.target,
            "measured": measured,
            "passed": self.passed,
        }


def load_slo_file(path: Path | None, defaults: SloSettings) -> SloSettings:
    """Targets from ``path`` over ``defaults``; unknown or invalid keys are an error."""
    if path is None:
        return defaults
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: an SLO file is a mapping of SLO name to target")
    unknown = set(data) - set(SloSettings.model_fields)
    if unknown:
        raise ValueError(
            f"{path}: unknown SLOs {sorted(unknown)}; known: {sorted(SLO_DESCRIPTIONS)}"
        )
    try:
        return SloSettings.model_validate(defaults.model_dump() | data)
    except ValidationError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def check_slos(targets: SloSettings, measured: dict[str, float]) -> list[SloResult]:
    """One result per SLO; missing or NaN measurements fail."""
    results = []
    for name in SLO_DESCRIPTIONS:
        target = float(getattr(targets, name))
        value = float(measured.get(name, math.nan))
        results.append(SloResult(name, target, value, not math.isnan(value) and value <= target))
    return results


def slo_table(results: list[SloResult]) -> Table:
    """The pass/fail table printed at the end of a load test."""
    table = Table("SLO", "target", "measured", "result", title="SLO gate")
    for result in results:
        what, unit = SLO_DESCRIPTIONS[result.name]
        measured = "no data" if math.isnan(result.measured) else f"{result.measured:.4g} {unit}"
        verdict = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
        table.add_row(what, f"<= {result.target:g} {unit}", measured, verdict)
    return table
