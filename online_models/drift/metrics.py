"""Prometheus metrics of the drift monitor and the fine-tunes it starts.

The one place these names are spelled; ``deploy/prometheus/`` rules and the Grafana
dashboard are tested against them. Labels stay low-cardinality: detector and signal names
come from a closed set, verdicts are promoted / canary / rejected / failed, canary arms are
canary / control. The alert sinks' own
metrics are in ``online_models.alerts.metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class DriftMetrics:
    """What the drift monitor exports about its detectors and fine-tunes, on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.observations = Counter(
            "streamrec_drift_observations_total",
            "Values fed to each detector.",
            ["detector"],
            registry=registry,
        )
        self.suppressed = Counter(
            "streamrec_drift_suppressed_total",
            "Harmful detections held back by warm-up or minimum spacing.",
            ["detector"],
            registry=registry,
        )
        self.signal_level = Gauge(
            "streamrec_drift_signal_level",
            "Recent mean of each watched signal.",
            ["detector"],
            registry=registry,
        )
        self.last_signal = Gauge(
            "streamrec_drift_last_signal_timestamp_seconds",
            "Wall time the monitor last read a learner signal (staleness means a stuck learner).",
            registry=registry,
        )
        self.finetune_runs = Counter(
            "streamrec_finetune_runs_total", "Fine-tunes finished.", ["verdict"], registry=registry
        )
        self.finetune_duration = Gauge(
            "streamrec_finetune_duration_seconds",
            "Wall time of the last fine-tune.",
            registry=registry,
        )
        self.finetune_last = Gauge(
            "streamrec_finetune_last_timestamp_seconds",
            "Wall time the last fine-tune finished.",
            registry=registry,
        )
        self.finetune_hit_rate = Gauge(
            "streamrec_finetune_hit_rate_ratio",
            "HR@20 on the held-out examples of the last fine-tune.",
            ["model"],
            registry=registry,
        )
        self.finetune_running = Gauge(
            "streamrec_finetune_running", "1 while a fine-tune process runs.", registry=registry
        )
        self.canary_version = Gauge(
            "streamrec_canary_version",
            "Model version on the canary arm (0: no canary).",
            registry=registry,
        )
        self.canary_impressions = Gauge(
            "streamrec_canary_impressions",
            "Resolved impressions the canary watch counted, by arm (canary, control).",
            ["arm"],
            registry=registry,
        )
        self.canary_rate = Gauge(
            "streamrec_canary_rate_ratio",
            "CTR and served HR of each arm since the canary started.",
            ["arm", "metric"],
            registry=registry,
        )
        self.canary_decisions = Counter(
            "streamrec_canary_decisions_total",
            "Canaries ended, by action (promote, roll_back, keep_control).",
            ["action"],
            registry=registry,
        )
