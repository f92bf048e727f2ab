"""``streamrec bench drift --replay SOURCE``: the alerts a recorded stream raises, per day.

How often would on-call hear from the drift monitor on this shop's traffic? The source
(anything ``streamrec replay`` reads) becomes training examples through the flow's own
builder; a model is trained on the examples before the warm-up cut-off (``streamrec train``'s
``train``), then the online learner's step and the drift monitor go over the rest in
micro-batches, as in the running loop (``run_stream`` of ``bench/drift.py``, without the
fine-tune). Every alert is counted under the event-time day (UTC) of the example that
tripped it and its severity: ``critical`` pages a person, ``warning`` goes to the team's
channel, ``info`` is kept for the record.

The cut-off defaults to the time that leaves ``DEFAULT_WARMUP_SHARE`` of the examples for
the warm-up, so any source works without knowing its dates.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.progress import Progress

from flows.example_builder import examples_from_events
from flows.feature_config import FeatureConfig
from loadtest.bench.drift import run_stream
from online_models.offline.training import train
from streamrec.alerts import Severity
from streamrec.events import EventLimits
from streamrec.recorded_events import only_events, read_recorded
from streamrec.settings import Settings
from streamrec.training_examples import TrainingExample

DEFAULT_WARMUP_SHARE = 0.4


def day_of(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d")


def warmup_cutoff_ms(examples: list[TrainingExample], share: float) -> int:
    """The event time that leaves ``share`` of ``examples`` before it."""
    times = sorted(example.ts for example in examples)
    return times[min(len(times) - 1, int(len(times) * share))]


def alerts_per_day(
    alerts: list[tuple[int, str, Severity]], stream_days: list[str]
) -> dict[str, Any]:
    """Per-day counts by severity (days with alerts), and the figures the targets read:
    pages in all, and the most and the median warnings of a day over every stream day."""
    by_day: dict[str, Counter[str]] = defaultdict(Counter)
    detectors: dict[str, Counter[str]] = defaultdict(Counter)
    for ts, detector, severity in alerts:
        by_day[day_of(ts)][severity.value] += 1
        detectors[day_of(ts)][detector] += 1
    warnings = [by_day[day][Severity.WARNING.value] if day in by_day else 0 for day in stream_days]
    return {
        "days": len(stream_days),
        "pages": sum(counts[Severity.CRITICAL.value] for counts in by_day.values()),
        "warnings": sum(warnings),
        "infos": sum(counts[Severity.INFO.value] for counts in by_day.values()),
        "warnings_per_day_max": max(warnings, default=0),
        "warnings_per_day_median": statistics.median(warnings) if warnings else 0,
        "days_with_more_than_one_warning": sum(1 for count in warnings if count > 1),
        "alerts_per_day": [
            {"day": day, **dict(by_day[day]), "detectors": dict(detectors[day])}
            for day in sorted(by_day)
        ],
    }


def run_drift_replay(
    settings: Settings, source: Path, warmup_until_ms: int | None = None
) -> dict[str, Any]:
    """Train on the warm-up, stream the rest through learner and monitor; count the alerts."""
    events = only_events(read_recorded(source, EventLimits.from_settings(settings.events)))
    examples = list(examples_from_events(events, FeatureConfig.from_settings(settings.flow)))
    if not examples:
        raise ValueError(f"{source}: no training examples")
    cutoff = warmup_until_ms or warmup_cutoff_ms(examples, DEFAULT_WARMUP_SHARE)
    warm = [example for example in examples if example.ts < cutoff]
    stream = sorted((example for example in examples if example.ts >= cutoff), key=_event_time)
    if not warm or not stream:
        raise ValueError("the warm-up cut-off leaves no warm-up or no stream examples")
    trained = train(settings.model, settings.train, warm, progress=True)
    with Progress(transient=True) as progress:
        task = progress.add_task("learner and drift monitor", total=len(stream))

        def advancing() -> Iterator[TrainingExample]:
            for count, example in enumerate(stream, 1):
                if count % 5000 == 0:
                    progress.update(task, completed=count)
                yield example

        run = run_stream(
            settings, advancing(), False, weights=trained.weights, index_of=_event_time
        )
    alerts = [(ts, alert.detector, alert.severity) for ts, alert in run.alert_events]
    stream_days = sorted({day_of(example.ts) for example in stream})
    return {
        "replay_source": str(source),
        "warmup_until": datetime.fromtimestamp(cutoff / 1000, UTC).isoformat(),
        "warmup_examples": len(warm),
        "stream_examples": run.examples,
        "stream_hr_at_20": round(sum(run.hits) / max(1, len(run.hits)), 4),
        **alerts_per_day(alerts, stream_days),
    }


def _event_time(example: TrainingExample) -> int:
    return example.ts
