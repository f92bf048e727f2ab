"""``bench drift --replay``: alerts per simulated day by severity, on any recorded source."""

from __future__ import annotations

from pathlib import Path

from loadtest.bench.drift_replay import alerts_per_day, run_drift_replay, warmup_cutoff_ms
from loadtest.synthetic_traffic import GeneratorConfig, Scenario, generate
from streamrec.alerts import Severity
from streamrec.settings import LearnerSettings, Settings, TrainSettings

DAY_MS = 86_400_000


def test_alerts_are_counted_per_event_time_day_and_severity() -> None:
    alerts = [
        (0, "hit_rate", Severity.WARNING),
        (DAY_MS + 5, "hit_rate", Severity.WARNING),
        (DAY_MS + 9, "new_items", Severity.WARNING),
        (DAY_MS + 10, "quality_not_recovered", Severity.CRITICAL),
        (3 * DAY_MS, "session_length", Severity.INFO),
    ]
    days = ["1970-01-01", "1970-01-02", "1970-01-03", "1970-01-04"]
    report = alerts_per_day(alerts, days)
    assert (report["pages"], report["warnings"], report["infos"]) == (1, 3, 1)
    assert report["warnings_per_day_max"] == 2
    assert report["warnings_per_day_median"] == 0.5  # 1, 2, 0, 0
    assert report["days_with_more_than_one_warning"] == 1
    second = report["alerts_per_day"][1]
    assert second["day"] == "1970-01-02" and second["warning"] == 2 and second["critical"] == 1
    assert second["detectors"] == {"hit_rate": 1, "new_items": 1, "quality_not_recovered": 1}


def test_the_default_cutoff_leaves_the_share_before_it() -> None:
    class Example:
        def __init__(self, ts: int) -> None:
            self.ts = ts

    examples = [Example(ts) for ts in range(100, 0, -1)]
    assert warmup_cutoff_ms(examples, 0.4) == 41  # 40 examples (1..40) before it


def test_a_recorded_event_file_goes_through_training_learner_and_monitor(tmp_path: Path) -> None:
    lines, _ = generate(GeneratorConfig(Scenario.STATIONARY, events=6000, seed=3))
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    settings = Settings(
        train=TrainSettings(epochs=1, max_steps_per_epoch=20),
        learner=LearnerSettings(batch_size=128),
    )
    report = run_drift_replay(settings, source)
    assert report["warmup_examples"] > 0 and report["stream_examples"] > 0
    assert report["warmup_examples"] + report["stream_examples"] > 4000
    assert report["days"] >= 1 and report["pages"] == 0
    assert 0 < report["stream_hr_at_20"] <= 1
