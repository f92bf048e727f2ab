"""Prometheus metrics of the alert sinks (``streamrec_drift_alerts_*``, ``streamrec_alerts_*``).

The one place these names are spelled; ``deploy/prometheus/`` rules and the Grafana
dashboard are tested against them. Labels stay low-cardinality: detector names come from
a closed set, sinks are the few of ``online_models.alerts.sinks``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AlertMetrics:
    """What the alert sinks count, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.alerts = Counter(
            "streamrec_drift_alerts_total",
            "Alerts raised, by source and severity.",
            ["detector", "severity"],
            registry=registry,
        )
        self.last_alert = Gauge(
            "streamrec_drift_last_alert_timestamp_seconds",
            "Wall time of the last alert.",
            ["detector"],
            registry=registry,
        )
        self.sink_failures = Counter(
            "streamrec_alerts_sink_failures_total",
            "Alerts a sink failed to deliver.",
            ["sink"],
            registry=registry,
        )
        self.webhook_dropped = Counter(
            "streamrec_alerts_webhook_dropped_total",
            "Alerts dropped because the webhook queue was full.",
            registry=registry,
        )
