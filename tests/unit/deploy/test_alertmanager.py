"""Alertmanager's routes: every rule's alert reaches the receiver its severity promises."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO_ROOT as ROOT
from tests.deploy_manifests import load_documents
from tests.unit.deploy.test_prometheus_rules import rules

CONFIG = ROOT / "deploy" / "k8s" / "alertmanager.yml"
RECEIVER_OF = {"critical": "pager", "warning": "team-channel", "info": "discard"}
amtool = pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed")


def route(**labels: str) -> str:
    """The receiver Alertmanager picks for an alert with ``labels`` (amtool's answer)."""
    result = subprocess.run(
        ["amtool", "config", "routes", "test", f"--config.file={CONFIG}"]
        + [f"{name}={value}" for name, value in labels.items()],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.strip()


@amtool
def test_amtool_accepts_the_config() -> None:
    result = subprocess.run(["amtool", "check-config", str(CONFIG)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@amtool
def test_every_alert_rule_routes_by_its_severity() -> None:
    for rule in rules():
        labels = {"alertname": rule["alert"], **rule["labels"]}
        assert route(**labels) == RECEIVER_OF[rule["labels"]["severity"]], rule["alert"]


def test_pages_come_only_from_conditions_a_person_must_act_on() -> None:
    """Drift the system absorbs warns; what did not heal, or cannot heal itself, pages."""
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in rules()}
    for warns in ("StreamrecHitRateDrop", "StreamrecRecommendationCtrDrop",
                  "StreamrecFineTuneFailed", "StreamrecFineTuneRejected"):  # fmt: skip
        assert severity[warns] == "warning", warns
    for pages in ("StreamrecQualityNotRecovered", "StreamrecFineTunesFailingRepeatedly",
                  "StreamrecNoNewModelVersion", "StreamrecProcessCrashLooping",
                  "StreamrecFlowFallingBehind", "StreamrecLearnerFallingBehind",
                  "StreamrecFlowDeadLetterRateHigh"):  # fmt: skip
        assert severity[pages] == "critical", pages


def test_repeated_alerts_of_one_cause_are_grouped_and_inhibitions_name_real_alerts() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert {"alertname", "detector"} <= set(config["route"]["group_by"])
    names = {rule["alert"] for rule in rules()}
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            if matcher.startswith("alertname"):
                pattern = matcher.split("=", 1)[1].strip('~"')
                assert set(pattern.split("|")) <= names, pattern


def test_compose_and_kubernetes_run_alertmanager_on_this_config() -> None:
    compose = load_documents(ROOT / "deploy" / "compose.yaml")[0]
    service = compose["services"]["alertmanager"]
    assert any(v.startswith("./k8s/alertmanager.yml:") for v in service["volumes"])
    prometheus = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    targets = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]
    kustomization = load_documents(ROOT / "deploy" / "k8s" / "kustomization.yaml")[0]
    generated = {g["name"]: g["files"] for g in kustomization["configMapGenerator"]}
    assert generated["streamrec-alertmanager"] == ["alertmanager.yml"]
