"""Where a long-running process's alerts go: the alerts topic, the Redis alerts stream, and
the log (the drift monitor delivers its own through ``online_models.alerts.sinks``, which
adds the webhook and Prometheus).

The flow (``redis_resync``, ``topic_reset``) and the learner (``learner_guard``,
``model_version_unloadable``, ``topic_reset``) raise few alerts, often from the middle of a
recovery: the broker or Redis just came back. So sending never raises: each destination
that fails is logged and the others still get the alert, and the process goes on (the
alert is about a fault it has already repaired or stepped around). The topic record is keyed by
detector, like every other alert; the stream entry is what ``streamrec alerts tail`` shows.
The producer and the Redis client are made on the first alert.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import KafkaException, Producer

from streamrec.alerts import Alert, alert_as_dict, append_to_stream, encode_alert
from streamrec.kafka_clients import make_producer
from streamrec.redis_connection import REDIS_ERRORS, RedisClient, connect_redis
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings
from streamrec.structured_log import log_event
from streamrec.topics import Topics

logger = logging.getLogger("streamrec.alerts")

DELIVERY_WAIT_S = 5.0


class AlertSender:
    """Sends a process's alerts; one per process, safe to call from any thread."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = Topics.from_settings(settings.kafka).alerts
        self._stream = RedisKeys(settings.redis.key_prefix).alerts
        self._producer: Producer | None = None
        self._redis: RedisClient | None = None
        self._lock = threading.Lock()

    def send(self, alert: Alert) -> None:
        """Log ``alert`` and send it to the topic and the stream; failures are logged only."""
        log_event(logger, "alert", logging.WARNING, **alert_as_dict(alert))
        encoded = encode_alert(alert)
        with self._lock:
            try:
                producer = self._producer or self._make_producer()
                producer.produce(self._topic, encoded, key=alert.detector.encode())
                if producer.flush(DELIVERY_WAIT_S):
                    raise KafkaException(f"not delivered within {DELIVERY_WAIT_S}s")
            except (KafkaException, BufferError) as exc:
                self._failed("kafka", alert, exc)
            try:
                client = self._redis or self._make_redis()
                append_to_stream(
                    client, self._stream, encoded, self._settings.drift.alerts_stream_maxlen
                )
            except REDIS_ERRORS as exc:
                self._failed("redis", alert, exc)

    def _make_producer(self) -> Producer:
        self._producer = make_producer(self._settings.kafka, **{"linger.ms": 0})
        return self._producer

    def _make_redis(self) -> RedisClient:
        redis_settings = self._settings.redis
        self._redis = connect_redis(
            redis_settings.redis_url.get_secret_value(),
            socket_timeout=redis_settings.redis_timeout_s,
            socket_connect_timeout=redis_settings.redis_timeout_s,
        )
        return self._redis

    @staticmethod
    def _failed(sink: str, alert: Alert, exc: Exception) -> None:
        log_event(
            logger,
            "alert_sink_failed",
            logging.ERROR,
            sink=sink,
            alert_id=alert.alert_id,
            error=repr(exc),
        )
