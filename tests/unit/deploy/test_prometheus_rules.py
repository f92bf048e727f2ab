"""The Prometheus alert rules: valid for promtool, on metrics the code exports, with runbooks,
and every fault signal of the loop watched."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics import MetricWrapperBase

from flows.metrics import FlowMetrics
from online_models.learner.metrics import LearnerMetrics
from serving.metrics import ServingMetrics
from streamrec.settings import SloSettings
from tests.conftest import REPO_ROOT as ROOT
from tests.deploy_manifests import exported_metric_names
from tests.unit.docs.test_runbook import heading_anchors

RULE_FILES = sorted((ROOT / "deploy" / "prometheus").glob("*rules*.yml"))
# Prometheus's own, and prometheus_client's process collector (on every process's registry).
BUILTIN = {"up", "process_start_time_seconds"}


def rules() -> list[dict]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.extend(group["rules"])
    return found


def test_rule_files_exist() -> None:
    assert RULE_FILES and rules()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_only_use_metrics_the_code_exports() -> None:
    exported = exported_metric_names() | BUILTIN
    for rule in rules():
        names = set(re.findall(r"\b(streamrec_[a-z0-9_]+|up|process_[a-z_]+)\b", rule["expr"]))
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']}: unknown {names - exported}"


def test_every_alert_has_severity_and_an_existing_runbook_section() -> None:
    sections = heading_anchors((ROOT / "docs" / "runbook.md").read_text())
    for rule in rules():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/runbook.md" and anchor in sections, rule["alert"]
        for part in ("**Means.**", "**Confirm.**", "**Do.**"):
            assert part in sections[anchor], f"{rule['alert']}: #{anchor} lacks {part}"


# The metrics of the loop that signal a fault, by attribute of their metrics class: each
# must be watched by an alert rule. Counters of normal events are listed beside them, so a
# new counter needs a decision (alert on it, or say why it is normal).
FAULT_METRICS: dict[type, tuple[str, ...]] = {
    FlowMetrics: ("rejects", "messages_refused", "resyncs", "topic_resets"),
    LearnerMetrics: ("skipped", "unloadable_versions", "decode_errors", "model_version"),
    # requests: its 5xx; impressions: dropped and failed; model_version: behind the learner.
    ServingMetrics: (
        "requests",
        "redis_errors",
        "unreadable_keys",
        "fallbacks",
        "model_load_failures",
        "impressions",
        "model_version",
    ),
}
NORMAL_COUNTERS: dict[type, tuple[str, ...]] = {
    # Duplicates after a restart and late events are expected; resync_entries is the size
    # of a re-sync, whose count is alerted on.
    FlowMetrics: (
        "events_in",
        "messages_out",
        "duplicates",
        "late_events",
        "sessions_written",
        "sessions_evicted",
        "redis_commands",
        "resync_entries",
        "exposure_outcomes",  # clicked / ignored lists: the feedback itself, not a fault
    ),
    LearnerMetrics: ("examples", "steps", "versions", "duplicates"),
    # Per-arm requests and fallbacks: an experiment's traffic split (a popularity arm's
    # answers are all "fallbacks"); explored_items: exploration slots filled;
    # explain_requests: on-call asking why (kept out of the latency histogram).
    ServingMetrics: (
        "model_swaps",
        "arm_requests",
        "arm_fallbacks",
        "explored_items",
        "explain_requests",
    ),
}
# Alert -> the SLO (SloSettings default) its threshold must equal, in the rule's unit.
SLO_THRESHOLDS = {
    "StreamrecFeatureFreshnessSloMissed": ("freshness_p99_ms", 1 / 1000),
    "StreamrecEventToWeightsSloMissed": ("event_to_weights_p99_ms", 1 / 1000),
    "StreamrecServingLatencySloMissed": ("serving_p99_ms", 1 / 1000),
    "StreamrecFlowDeadLetterRateHigh": ("dlq_rate", 1.0),
}
PROMTOOL_TESTS = sorted(Path(__file__).parent.glob("*_test.yml"))


def rules_by_alert() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in rules()}


def family_name(metric: MetricWrapperBase) -> str:
    """The metric family's name (a counter's without ``_total``)."""
    return metric.describe()[0].name


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))


def test_every_counter_of_the_loop_is_a_fault_signal_or_listed_as_normal() -> None:
    for metrics_class in FAULT_METRICS:
        metrics = metrics_class(CollectorRegistry())
        counters = {name for name, value in vars(metrics).items() if isinstance(value, Counter)}
        listed = set(FAULT_METRICS[metrics_class]) | set(NORMAL_COUNTERS[metrics_class])
        assert counters <= listed, f"{metrics_class.__name__}: decide {counters - listed}"
        assert not set(FAULT_METRICS[metrics_class]) & set(NORMAL_COUNTERS[metrics_class])


def test_every_fault_metric_of_the_loop_is_watched_by_an_alert() -> None:
    expressions = [rule["expr"] for rule in rules()]
    for metrics_class, attributes in FAULT_METRICS.items():
        metrics = metrics_class(CollectorRegistry())
        for attribute in attributes:
            name = family_name(getattr(metrics, attribute))
            series = re.compile(rf"\b{name}(_total|_bucket|_count|_sum)?\b")
            assert any(series.search(expr) for expr in expressions), f"no alert on {name}"


def test_every_scrape_job_of_the_loop_has_a_down_alert() -> None:
    """Job names are the compose Prometheus's, so ``up{job=...}`` selects real targets."""
    config = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    watched = set(re.findall(r'\bup\{job="([^"]+)"\}', " ".join(r["expr"] for r in rules())))
    assert watched == jobs, f"missing {jobs - watched}, unknown {watched - jobs}"


def test_slo_alerts_use_the_settings_defaults() -> None:
    by_alert = rules_by_alert()
    for alert, (field, scale) in SLO_THRESHOLDS.items():
        slo = SloSettings.model_fields[field].default * scale
        threshold = re.search(r">\s*([0-9.]+)\s*$", by_alert[alert]["expr"])
        assert threshold, alert
        assert float(threshold.group(1)) == pytest.approx(slo), alert


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
@pytest.mark.parametrize("path", PROMTOOL_TESTS, ids=lambda path: path.name)
def test_promtool_unit_tests_of_the_rules_pass(path: Path) -> None:
    result = subprocess.run(
        ["promtool", "test", "rules", path.name], capture_output=True, text=True, cwd=path.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
