"""The Grafana dashboards query only metrics the code exports and are well formed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT as ROOT
from tests.deploy_manifests import DRIFT_MONITOR_METRICS, exported_metric_names

DASHBOARD_FILES = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
BUILTIN = {"up"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def drift_dashboard() -> dict:
    return load(ROOT / "deploy" / "grafana" / "drift-dashboard.json")


def expressions(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_loop_and_drift_dashboards_exist() -> None:
    assert {path.name for path in DASHBOARD_FILES} >= {
        "drift-dashboard.json",
        "loop-dashboard.json",
    }


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.name)
def test_dashboard_metrics_are_exported_by_the_code(path: Path) -> None:
    exported = exported_metric_names() | BUILTIN
    used: set[str] = set()
    for expr in expressions(load(path)):
        names = set(re.findall(r"\b(streamrec_[a-z0-9_]+|up)\b", expr))
        assert names, f"{path.name}: a query without a metric: {expr}"
        used |= names
    assert used <= exported, f"{path.name}: not exported: {sorted(used - exported)}"


def test_drift_dashboard_queries_only_the_drift_monitor() -> None:
    exported = exported_metric_names(DRIFT_MONITOR_METRICS)
    used = {
        name
        for expr in expressions(drift_dashboard())
        for name in re.findall(r"\bstreamrec_[a-z0-9_]+\b", expr)
    }
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"


def test_every_drift_monitor_metric_is_on_the_dashboard() -> None:
    text = json.dumps(drift_dashboard())
    missing = [name for name in exported_metric_names(DRIFT_MONITOR_METRICS) if name not in text]
    assert missing == []


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.name)
def test_panels_have_unique_ids_and_the_provisioned_datasource(path: Path) -> None:
    dashboard = load(path)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"], panel["id"]
        assert panel["datasource"]["uid"] == "prometheus"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert all(ref_ids) and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", panel["title"]


def test_dashboards_have_distinct_uids_and_titles() -> None:
    dashboards = [load(path) for path in DASHBOARD_FILES]
    for key in ("uid", "title"):
        values = [dashboard[key] for dashboard in dashboards]
        assert len(values) == len(set(values)), key


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query as a recording rule, so promtool's PromQL parser checks it."""
    rules = [
        {"record": f"dashboard:query:{index}", "expr": expr}
        for index, expr in enumerate(e for path in DASHBOARD_FILES for e in expressions(load(path)))
    ]
    rule_file = tmp_path / "dashboard-queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(rule_file)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
