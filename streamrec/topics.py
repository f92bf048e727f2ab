"""Topic names on the bus: the only place they are spelled out."""

from __future__ import annotations

from dataclasses import dataclass

from streamrec.settings import KafkaSettings

CLICKS = "clicks"
PURCHASES = "purchases"
IMPRESSIONS = "impressions"
TRAINING_EXAMPLES = "training-examples"
EVENTS_DLQ = "events-dlq"
ALERTS = "alerts"
ALL_TOPICS = (CLICKS, PURCHASES, IMPRESSIONS, TRAINING_EXAMPLES, EVENTS_DLQ, ALERTS)

_FIELD_FOR_EVENT_TYPE = {"click": "clicks", "purchase": "purchases", "impression": "impressions"}


@dataclass(frozen=True, slots=True)
class Topics:
    """Resolved topic names (with the configured prefix) for one deployment or test."""

    clicks: str
    purchases: str
    impressions: str
    training_examples: str
    events_dlq: str
    alerts: str

    @classmethod
    def from_settings(cls, settings: KafkaSettings) -> Topics:
        return cls.with_prefix(settings.topic_prefix)

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        return cls(*(prefix + name for name in ALL_TOPICS))

    def all(self) -> tuple[str, ...]:
        return (
            self.clicks,
            self.purchases,
            self.impressions,
            self.training_examples,
            self.events_dlq,
            self.alerts,
        )

    def for_event_type(self, event_type: str) -> str:
        """The topic an event of this type is produced to."""
        return getattr(self, _FIELD_FOR_EVENT_TYPE[event_type])
