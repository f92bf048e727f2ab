"""Alert sinks: fan-out isolation, webhook retries and backoff, never blocking (no broker)."""

from __future__ import annotations

import threading
import time

from online_models.alerts.sinks import (
    AlertFanout,
    LogAlertSink,
    PrometheusAlertSink,
    WebhookAlertSink,
    webhook_payload,
)
from online_models.drift import metrics as drift_metrics
from streamrec.alerts import Alert, make_alert


def an_alert(detector: str = "hit_rate") -> Alert:
    return make_alert(detector, "hit@20", 0.5, 0.1, 1234, 7, "dropped")


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
        "http://x", 1.0, retries=4, backoff_s=0.01, queue_size=10, post=endpoint
    )
    sink.send(an_alert(), b"")
    assert endpoint.done.wait(5)
    sink.close()
    assert len(endpoint.bodies) == 3 and sink.delivered == 1


def test_webhook_gives_up_after_retries_and_counts_it() -> None:
    before = drift_metrics.SINK_FAILURES.labels("webhook")._value.get()
    endpoint = FlakyEndpoint(failures=100, status=0)
    sink = WebhookAlertSink(
        "http://x", 1.0, retries=2, backoff_s=0.01, queue_size=10, post=endpoint
    )
    sink.send(an_alert(), b"")
    sink.close()
    assert len(endpoint.bodies) == 3
    assert drift_metrics.SINK_FAILURES.labels("webhook")._value.get() == before + 1


def test_webhook_never_blocks_the_sender() -> None:
    release = threading.Event()

    def hanging_post(url: str, body: bytes, timeout_s: float) -> int:
        release.wait(10)
        return 200

    dropped = drift_metrics.WEBHOOK_DROPPED._value.get()
    sink = WebhookAlertSink("http://x", 1.0, 0, 0.01, queue_size=2, post=hanging_post)
    started = time.perf_counter()
    for _ in range(10):
        sink.send(an_alert(), b"")
    assert time.perf_counter() - started < 0.1
    assert drift_metrics.WEBHOOK_DROPPED._value.get() >= dropped + 7
    release.set()
    sink.close()


def test_webhook_payload_is_alertmanager_and_slack_shaped() -> None:
    payload = webhook_payload(an_alert())
    assert payload["version"] == "4" and payload["status"] == "firing"
    (entry,) = payload["alerts"]
    assert entry["labels"]["severity"] == "critical"
    assert entry["annotations"]["runbook_url"].startswith("docs/runbook.md#")
    assert "hit_rate" in payload["text"] and "runbook" in payload["text"]


def test_a_failing_sink_does_not_stop_the_others() -> None:
    recording = RecordingSink()
    before = drift_metrics.ALERTS.labels("ctr", "critical")._value.get()
    fanout = AlertFanout([BrokenSink(), LogAlertSink(), PrometheusAlertSink(), recording])
    fanout.send(an_alert("ctr"))
    assert len(recording.got) == 1
    assert drift_metrics.ALERTS.labels("ctr", "critical")._value.get() == before + 1
    assert drift_metrics.SINK_FAILURES.labels("broken")._value.get() >= 1
