"""A process's alerts: every destination gets them, and one failing never stops the process."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamrec.alert_sender import AlertSender
from streamrec.alerts import decode_alert, make_alert
from streamrec.settings import Settings


class BrokerDown:
    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        raise KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN))


class Stream:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict, int]] = []

    def xadd(self, key: str, fields: dict, maxlen: int, approximate: bool) -> None:
        self.entries.append((key, fields, maxlen))


def test_a_failing_destination_is_logged_and_the_others_still_get_the_alert(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings()
    alerts = AlertSender(settings)
    stream = Stream()
    alerts._producer, alerts._redis = BrokerDown(), stream  # type: ignore[assignment]
    alert = make_alert("topic_reset", "offset_beyond_end", 500.0, 40.0, 0, None)
    alerts.send(alert)
    [(key, fields, maxlen)] = stream.entries
    assert key == f"{settings.redis.key_prefix}:alerts"
    assert decode_alert(fields["alert"]) == alert
    assert maxlen == settings.drift.alerts_stream_maxlen
    lines = {r.getMessage(): r.fields for r in caplog.records}  # type: ignore[attr-defined]
    assert lines["alert"]["alert_id"] == alert.alert_id
    assert lines["alert_sink_failed"]["sink"] == "kafka"
