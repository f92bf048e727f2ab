"""`streamrec loadtest` as a deploy gate: it runs the whole loop and exits 1 on a failed SLO."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from streamrec.settings import Settings
from tests.conftest import free_port
from tests.process_env import process_env


def test_loadtest_fails_when_an_slo_is_impossible_and_passes_the_others(
    settings: Settings, tmp_path: Path
) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text(
        "freshness_p99_ms: 30000\nevent_to_weights_p99_ms: 60000\nserving_p99_ms: 0.001\n"
        "serving_error_rate: 0.01\ndlq_rate: 0.01\nconsumer_lag: 100000\n"
    )
    env = process_env(
        settings,
        STREAMREC_FLOW_RECOVERY_DIR=str(tmp_path / "recovery"),
        STREAMREC_SERVING_PORT=str(free_port()),
        STREAMREC_FLOW_METRICS_PORT=str(free_port()),
        STREAMREC_LEARNER_METRICS_PORT=str(free_port()),
        STREAMREC_DRIFT_METRICS_PORT=str(free_port()),
        STREAMREC_DRIFT_FINETUNE_ENABLED="false",
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "loadtest",
            str(settings.data_dir),
            "--start-loop",
            "--train-until",
            "2014-04-06T00:00:00Z",
            "--since",
            "2014-06-15T00:00:00Z",
            "--rate",
            "1500",
            "--limit",
            "4000",
            "--shop-rate",
            "30",
            "--slo",
            str(slo),
            "--report-dir",
            str(tmp_path / "reports"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 1, run.stderr[-3000:]
    report = orjson.loads(run.stdout.strip().splitlines()[-1])
    verdicts = {s["slo"]: s["passed"] for s in report["slo"]}
    assert verdicts.pop("serving_p99_ms") is False
    assert all(verdicts.values()), report["slo"]
    assert report["events"] == 4000
    measured = {s["slo"]: s["measured"] for s in report["slo"]}
    assert measured["freshness_p99_ms"] > 0 and measured["event_to_weights_p99_ms"] > 0
    page = Path(report["report"])
    assert "FAIL" in page.read_text()
    assert (page.parent / "report.json").exists()
