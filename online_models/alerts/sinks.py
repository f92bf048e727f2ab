"""Where alerts go: the alerts topic, a Redis stream, the log, Prometheus, a webhook.

``AlertFanout.send`` hands one alert to every sink. A failing sink is logged and counted
(``streamrec_alerts_sink_failures_total``) and the others still get the alert. The webhook
sink never blocks its caller: alerts wait in a bounded queue and a background thread posts
them, retrying with exponential backoff; when the queue is full the alert is dropped and
counted (the topic, the stream and the log still have it). Counters go to the
``AlertMetrics`` passed in; short-lived processes that nobody scrapes pass none and only log.

Delivery: the topic sink is at-least-once (idempotent producer, flushed on ``close``); the
Redis stream is capped at ``alerts_stream_maxlen`` entries.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from confluent_kafka import Producer

from online_models.alerts.metrics import AlertMetrics
from streamrec.alerts import Alert, alert_as_dict, append_to_stream, encode_alert
from streamrec.kafka_clients import make_producer
from streamrec.redis_connection import RedisClient
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings
from streamrec.structured_log import log_event
from streamrec.topics import Topics

logger = logging.getLogger("streamrec.alerts")

Post = Callable[[str, bytes, float], int]


class AlertSink(Protocol):
    name: str

    def send(self, alert: Alert, encoded: bytes) -> None: ...

    def close(self) -> None: ...


class KafkaAlertSink:
    """Produce to the alerts topic, keyed by detector (one detector's alerts stay ordered)."""

    name = "kafka"

    def __init__(self, producer: Producer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    def send(self, alert: Alert, encoded: bytes) -> None:
        self._producer.produce(self._topic, encoded, key=alert.detector.encode())
        self._producer.poll(0)

    def close(self) -> None:
        remaining = self._producer.flush(10)
        if remaining:
            raise RuntimeError(f"{remaining} alerts not delivered to {self._topic}")


class RedisAlertSink:
    """Append to the capped alerts stream that ``streamrec alerts tail`` reads."""

    name = "redis"

    def __init__(self, client: RedisClient, key: str, maxlen: int) -> None:
        self._client = client
        self._key = key
        self._maxlen = maxlen

    def send(self, alert: Alert, encoded: bytes) -> None:
        append_to_stream(self._client, self._key, encoded, self._maxlen)

    def close(self) -> None:
        return None


class LogAlertSink:
    """One structured log line per alert."""

    name = "log"

    def send(self, alert: Alert, encoded: bytes) -> None:
        log_event(logger, "alert", logging.WARNING, **alert_as_dict(alert))

    def close(self) -> None:
        return None


class PrometheusAlertSink:
    """Count alerts by source and severity; remember when each source last fired."""

    name = "prometheus"

    def __init__(self, metrics: AlertMetrics) -> None:
        self._metrics = metrics

    def send(self, alert: Alert, encoded: bytes) -> None:
        self._metrics.alerts.labels(alert.detector, alert.severity.value).inc()
        self._metrics.last_alert.labels(alert.detector).set(alert.detected_at_ms / 1000)

    def close(self) -> None:
        return None


def webhook_payload(alert: Alert) -> dict[str, Any]:
    """Alertmanager webhook (version 4) JSON with a Slack-style ``text`` line on top."""
    starts_at = datetime.fromtimestamp(alert.detected_at_ms / 1000, UTC).isoformat()
    summary = (
        f"[{alert.severity.value}] {alert.detector}: {alert.signal} "
        f"{alert.level_before:.4g} -> {alert.level_after:.4g} "
        f"(model v{alert.model_version}) {alert.message}".rstrip()
    )
    return {
        "version": "4",
        "status": "firing",
        "receiver": "streamrec",
        "groupKey": f"streamrec:{alert.detector}",
        "text": f"{summary} - runbook: {alert.runbook}",
        "alerts": [
            {
                "status": "firing",
                "labels": {
                    "alertname": f"StreamrecDrift_{alert.detector}",
                    "detector": alert.detector,
                    "severity": alert.severity.value,
                },
                "annotations": {"summary": summary, "runbook_url": alert.runbook},
                "startsAt": starts_at,
                "fingerprint": alert.alert_id,
                "streamrec": alert_as_dict(alert),
            }
        ],
    }


def post_json(url: str, body: bytes, timeout_s: float) -> int:
    """POST ``body`` as JSON; the HTTP status (raises on connection errors)."""
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return int(response.status)


class WebhookAlertSink:
    """Post alerts from a background thread; retries with backoff, never blocks ``send``."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        queue_size: int,
        metrics: AlertMetrics | None,
        post: Post = post_json,
    ) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._retries = retries
        self._backoff_s = backoff_s
        self._post = post
        self._metrics = metrics
        self._queue: queue.Queue[Alert | None] = queue.Queue(queue_size)
        self.delivered = 0
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    def send(self, alert: Alert, encoded: bytes) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            if self._metrics is not None:
                self._metrics.webhook_dropped.inc()
            log_event(logger, "webhook_queue_full", logging.ERROR, alert_id=alert.alert_id)

    def close(self, timeout_s: float = 5.0) -> None:
        """Let queued alerts go out for up to ``timeout_s``, then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            self._deliver(alert)

    def _deliver(self, alert: Alert) -> None:
        body = orjson.dumps(webhook_payload(alert))
        wait_s = self._backoff_s
        for attempt in range(self._retries + 1):
            try:
                status = self._post(self._url, body, self._timeout_s)
                if 200 <= status < 300:
                    self.delivered += 1
                    return
                problem = f"HTTP {status}"
            except OSError as exc:
                problem = repr(exc)
            log_event(
                logger,
                "webhook_retry",
                logging.WARNING,
                alert_id=alert.alert_id,
                attempt=attempt + 1,
                problem=problem,
            )
            if attempt < self._retries:
                time.sleep(wait_s)
                wait_s *= 2
        if self._metrics is not None:
            self._metrics.sink_failures.labels(self.name).inc()
        log_event(logger, "webhook_gave_up", logging.ERROR, alert_id=alert.alert_id)


class AlertFanout:
    """Send each alert to every sink; one sink's failure never stops the others."""

    def __init__(self, sinks: Sequence[AlertSink], metrics: AlertMetrics | None) -> None:
        self.sinks = list(sinks)
        self._metrics = metrics

    def send(self, alert: Alert) -> None:
        encoded = encode_alert(alert)
        for sink in self.sinks:
            try:
                sink.send(alert, encoded)
            except Exception as exc:  # a sink is infrastructure: count, log, carry on
                if self._metrics is not None:
                    self._metrics.sink_failures.labels(sink.name).inc()
                log_event(
                    logger,
                    "alert_sink_failed",
                    logging.ERROR,
                    sink=sink.name,
                    alert_id=alert.alert_id,
                    error=repr(exc),
                )

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def build_fanout(
    settings: Settings, client: RedisClient, producer: Producer, metrics: AlertMetrics | None
) -> AlertFanout:
    """Every configured sink: topic, stream, log, Prometheus, and the webhook if a URL is set.

    Short-lived processes (fine-tune, rollback) pass ``metrics=None``: nobody scrapes them,
    so there is no Prometheus sink and failed deliveries are only logged; the drift monitor
    counts their alerts from the Redis stream instead.
    """
    sinks: list[AlertSink] = [
        KafkaAlertSink(producer, Topics.from_settings(settings.kafka).alerts),
        RedisAlertSink(
            client, RedisKeys(settings.redis.key_prefix).alerts, settings.drift.alerts_stream_maxlen
        ),
        LogAlertSink(),
    ]
    if metrics is not None:
        sinks.append(PrometheusAlertSink(metrics))
    url = settings.drift.webhook_url.get_secret_value()
    if url:
        drift = settings.drift
        sinks.append(
            WebhookAlertSink(
                url,
                drift.webhook_timeout_s,
                drift.webhook_retries,
                drift.webhook_backoff_s,
                drift.webhook_queue,
                metrics,
            )
        )
    return AlertFanout(sinks, metrics)


def send_alert(settings: Settings, client: RedisClient, alert: Alert) -> None:
    """Send one alert to every sink from a short-lived process (a fine-tune, a rollback):
    nobody scrapes it, so no Prometheus sink; delivered before returning."""
    producer = make_producer(settings.kafka, **{"linger.ms": 0})
    fanout = build_fanout(settings, client, producer, metrics=None)
    try:
        fanout.send(alert)
    finally:
        fanout.close()
