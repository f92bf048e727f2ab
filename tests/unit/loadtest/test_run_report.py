"""A run report holds the run's own figures, its plots and the SLO verdicts."""

from __future__ import annotations

import math
from pathlib import Path

import orjson

from loadtest.experiment_report import OutcomeTally, SlotTally, experiment_report
from loadtest.run_report import RunRecord, write_report
from streamrec.exposure_outcomes import ArmTally


def test_report_writes_plots_html_and_json(tmp_path: Path) -> None:
    record = RunRecord(
        name="t1",
        summary={"events": 12345, "serving_p99_ms": 3.5, "missing": math.nan},
        events_per_s=[(0, 100.0), (1, 250.0)],
        hr_at_20={"online": [(1000, 0.4), (2000, 0.5)], "static": [(1000, 0.4), (2000, 0.3)]},
        model_versions=[(0, 1), (5, 2)],
        alerts=[{"t_s": 4.0, "detector": "adwin_hit_rate", "severity": "warning"}],
        slo=[{"slo": "serving_p99_ms", "target": 5.0, "measured": 3.5, "passed": True}],
    )
    page = write_report(record, tmp_path / "run")
    text = page.read_text()
    assert "12,345" in text and "adwin_hit_rate" in text and "PASS" in text
    for png in ("events.png", "hr20.png", "versions.png"):
        assert (tmp_path / "run" / png).read_bytes()[:4] == b"\x89PNG"
        assert png in text
    assert not (tmp_path / "run" / "serving.png").exists()
    saved = orjson.loads((tmp_path / "run" / "report.json").read_bytes())
    assert saved["summary"]["missing"] is None
    assert saved["hr_at_20"]["static"][1] == [2000, 0.3]


def test_report_shows_each_arms_ctr_with_its_interval(tmp_path: Path) -> None:
    arms = {
        "online": ArmTally(impressions=200, clicked=20, followed=100, hits=40, converted=2),
        "popularity": ArmTally(impressions=50, clicked=2, followed=30, hits=3),
    }
    slots = SlotTally(explored_shown=10, explored_clicked=1)
    report = experiment_report(OutcomeTally(arms, slots), "online", ("ctr", "served_hr"))
    text = write_report(RunRecord(name="t2", experiments=report), tmp_path / "run").read_text()
    assert "Experiment arms" in text and "popularity" in text
    assert "10.00% [6.57%, 14.94%]" in text  # online's CTR, 20 of 200, Wilson's interval
    assert "p=" in text  # popularity against the control
    assert "conversion" not in text  # only the metrics asked for
