"""Alert sinks: fan-out isolation, webhook retries and backoff, never blocking (no broker)."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry

from online_models.alerts.metrics import AlertMetrics
from online_models.alerts.sinks import (
    AlertFanout,
    LogAlertSink,
    PrometheusAlertSink,
    WebhookAlertSink,
    webhook_payload,
)
from streamrec.alerts import Alert, make_alert


def an_alert(detector: str = "hit_rate") -> Alert:
    return make_alert(detector, "hit@20", 0.5, 0.1, 1234, 7, "dropped")


def fresh_metrics() -> AlertMetrics:
    return AlertMetrics(CollectorRegistry())


def sample(metrics: AlertMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class FlakyEndpoint:
    """Fails the first ``failures`` posts, then accepts; records what it got."""

    def __init__(self, failures: int, status: int = 503) -> None:
        self.failures = failures
        self.status = status
        self.bodies: list[bytes] = []
        self.done = threading.Event()

    def __call__(self, url: str, body: bytes, timeout_s: float) -> int:
        self.bodies.append(body)
        if len(self.bodies) <= self.failures:
            if self.status:
                return self.status
            raise ConnectionRefusedError("down")
        self.done.set()
        return 200


class BrokenSink:
    name = "broken"

    def send(self, alert: Alert, encoded: bytes) -> None:
        raise RuntimeError("sink down")

    def close(self) -> None:
        return None


class RecordingSink:
    name = "recording"

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def send(self, alert: Alert, encoded: bytes) -> None:
        self.got.append(encoded)

    def close(self) -> None:
        return None


def test_webhook_retries_with_backoff_until_delivered() -> None:
    endpoint = FlakyEndpoint(failures=2)
    sink = WebhookAlertSink(
        "http://x", 1.0, retries=4, backoff_s=0.01, queue_size=10, metrics=None, post=endpoint
    )
    sink.send(an_alert(), b"")
    assert endpoint.done.wait(5)
    sink.close()
    assert len(endpoint.bodies) == 3 and sink.delivered == 1


def test_webhook_gives_up_after_retries_and_counts_it() -> None:
    metrics = fresh_metrics()
    endpoint = FlakyEndpoint(failures=100, status=0)
    sink = WebhookAlertSink(
        "http://x", 1.0, retries=2, backoff_s=0.01, queue_size=10, metrics=metrics, post=endpoint
    )
    sink.send(an_alert(), b"")
    sink.close()
    assert len(endpoint.bodies) == 3
    assert sample(metrics, "streamrec_alerts_sink_failures_total", sink="webhook") == 1


def test_webhook_never_blocks_the_sender() -> None:
    release = threading.Event()

    def hanging_post(url: str, body: bytes, timeout_s: float) -> int:
        release.wait(10)
        return 200

    metrics = fresh_metrics()
    sink = WebhookAlertSink(
        "http://x", 1.0, 0, 0.01, queue_size=2, metrics=metrics, post=hanging_post
    )
    started = time.perf_counter()
    for _ in range(10):
        sink.send(an_alert(), b"")
    assert time.perf_counter() - started < 0.1
    assert sample(metrics, "streamrec_alerts_webhook_dropped_total") >= 7
    release.set()
    sink.close()


def test_webhook_payload_is_alertmanager_and_slack_shaped() -> None:
    payload = webhook_payload(an_alert())
    assert payload["version"] == "4" and payload["status"] == "firing"
    (entry,) = payload["alerts"]
    assert entry["labels"]["severity"] == "warning"
    assert entry["annotations"]["runbook_url"].startswith("docs/runbook.md#")
    assert "hit_rate" in payload["text"] and "runbook" in payload["text"]


def test_a_failing_sink_does_not_stop_the_others() -> None:
    recording = RecordingSink()
    metrics = fresh_metrics()
    sinks = [BrokenSink(), LogAlertSink(), PrometheusAlertSink(metrics), recording]
    fanout = AlertFanout(sinks, metrics)
    fanout.send(an_alert("ctr"))
    assert len(recording.got) == 1
    alerts = sample(metrics, "streamrec_drift_alerts_total", detector="ctr", severity="warning")
    assert alerts == 1
    assert sample(metrics, "streamrec_alerts_sink_failures_total", sink="broken") == 1
