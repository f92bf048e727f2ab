"""Prometheus metrics of the drift monitor, the alert sinks and the fine-tune gate.

The one place these names are spelled; ``deploy/prometheus/`` rules and the Grafana
dashboard are tested against ``EXPORTED_METRICS``. Labels stay low-cardinality: detector
and signal names come from a closed set, verdicts are promoted / rejected / failed.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ALERTS = Counter(
    "streamrec_drift_alerts_total",
    "Alerts raised, by source and severity.",
    ["detector", "severity"],
)
LAST_ALERT = Gauge(
    "streamrec_drift_last_alert_timestamp_seconds", "Wall time of the last alert.", ["detector"]
)
OBSERVATIONS = Counter(
    "streamrec_drift_observations_total", "Values fed to each detector.", ["detector"]
)
SUPPRESSED = Counter(
    "streamrec_drift_suppressed_total",
    "Harmful detections held back by warm-up or minimum spacing.",
    ["detector"],
)
SIGNAL_LEVEL = Gauge(
    "streamrec_drift_signal_level", "Recent mean of each watched signal.", ["detector"]
)
LAST_SIGNAL = Gauge(
    "streamrec_drift_last_signal_timestamp_seconds",
    "Wall time the monitor last read a learner signal (staleness means a stuck learner).",
)
SINK_FAILURES = Counter(
    "streamrec_alerts_sink_failures_total", "Alerts a sink failed to deliver.", ["sink"]
)
WEBHOOK_DROPPED = Counter(
    "streamrec_alerts_webhook_dropped_total", "Alerts dropped because the webhook queue was full."
)
FINETUNE_RUNS = Counter("streamrec_finetune_runs_total", "Fine-tunes finished.", ["verdict"])
FINETUNE_DURATION = Gauge("streamrec_finetune_duration_seconds", "Wall time of the last fine-tune.")
FINETUNE_LAST = Gauge(
    "streamrec_finetune_last_timestamp_seconds", "Wall time the last fine-tune finished."
)
FINETUNE_HIT_RATE = Gauge(
    "streamrec_finetune_hit_rate_ratio",
    "HR@20 on the held-out examples of the last fine-tune.",
    ["model"],
)
FINETUNE_RUNNING = Gauge("streamrec_finetune_running", "1 while a fine-tune process runs.")

_ALL = (
    ALERTS,
    LAST_ALERT,
    OBSERVATIONS,
    SUPPRESSED,
    SIGNAL_LEVEL,
    LAST_SIGNAL,
    SINK_FAILURES,
    WEBHOOK_DROPPED,
    FINETUNE_RUNS,
    FINETUNE_DURATION,
    FINETUNE_LAST,
    FINETUNE_HIT_RATE,
    FINETUNE_RUNNING,
)


def exported_metric_names() -> frozenset[str]:
    """Every series name these metrics expose (counters with their ``_total`` suffix)."""
    names: set[str] = set()
    for metric in _ALL:
        for family in metric.collect():
            names.update(sample.name for sample in family.samples)
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return frozenset(name for name in names if not name.endswith("_created"))
