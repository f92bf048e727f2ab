"""The Prometheus alert rules: valid for promtool, on metrics the code exports, with runbooks."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO_ROOT as ROOT
from tests.deploy_manifests import exported_metric_names
from tests.unit.docs.test_runbook import heading_anchors

RULE_FILES = sorted((ROOT / "deploy" / "prometheus").glob("*rules*.yml"))
BUILTIN = {"up"}


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
        names = set(re.findall(r"\b(streamrec_[a-z0-9_]+|up)\b", rule["expr"]))
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']}: unknown {names - exported}"


def test_every_alert_has_severity_and_an_existing_runbook_section() -> None:
    sections = heading_anchors((ROOT / "docs" / "runbook.md").read_text())
    for rule in rules():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/runbook.md" and anchor in sections, rule["alert"]
