"""The Grafana dashboard queries only metrics the code exports and is well formed."""

from __future__ import annotations

import json
import re

from tests.conftest import REPO_ROOT as ROOT
from tests.deploy_manifests import DRIFT_MONITOR_METRICS, exported_metric_names


def drift_dashboard() -> dict:
    return json.loads((ROOT / "deploy" / "grafana" / "drift-dashboard.json").read_text())


def test_dashboard_metrics_are_exported_by_the_code() -> None:
    exported = exported_metric_names(DRIFT_MONITOR_METRICS)
    used: set[str] = set()
    for panel in drift_dashboard()["panels"]:
        for target in panel["targets"]:
            used.update(re.findall(r"\bstreamrec_[a-z0-9_]+\b", target["expr"]))
    assert used, "the dashboard queries nothing"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_every_drift_monitor_metric_is_on_the_dashboard() -> None:
    text = json.dumps(drift_dashboard())
    missing = [name for name in exported_metric_names(DRIFT_MONITOR_METRICS) if name not in text]
    assert missing == []


def test_panels_have_unique_ids_and_the_provisioned_datasource() -> None:
    dashboard = drift_dashboard()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"
        assert all(target["refId"] for target in panel["targets"])
