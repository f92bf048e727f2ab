"""The alert record: one structured event an on-call engineer can act on.

An alert says which detector fired on which signal, the signal's level before and after,
when (wall clock) and where in the stream (source offsets and the detector's own position),
which model version was serving, how severe it is and which runbook section to read.
It is encoded once (``encode_alert``) and the same bytes go to every sink. In the capped
Redis alerts stream (what ``streamrec alerts tail`` reads) an entry holds those bytes in
one field, ``STREAM_FIELD``: ``append_to_stream`` writes it, ``alert_from_stream`` reads it.
"""

from __future__ import annotations

import enum
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from streamrec.redis_connection import RedisClient

RUNBOOK = "docs/runbook.md"
STREAM_FIELD = "alert"


class Severity(enum.StrEnum):
    """What a person must do: ``critical`` pages (the system did not heal itself: act now),
    ``warning`` goes to the team's channel (look today; the system is responding), ``info``
    is kept for the record. deploy/alertmanager routes them so."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class StreamOffset:
    """A position on the bus: the alert points here so the data can be read back."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    detector: str
    signal: str
    level_before: float
    level_after: float
    detected_at_ms: int
    position: int
    model_version: int | None
    severity: Severity
    runbook: str
    message: str = ""
    offsets: tuple[StreamOffset, ...] = field(default_factory=tuple)


# Runbook section (the anchor GitHub renders for the heading) for each alert source.
RUNBOOK_ANCHORS: dict[str, str] = {
    "hit_rate": "hit-rate-drop",
    "quality_not_recovered": "quality-not-recovered",
    "promotion_regressed": "model-rollback",
    "loss": "training-loss-rise",
    "category_share": "category-mix-shift",
    "new_items": "new-items-surge",
    "session_length": "session-length-shift",
    "ctr": "recommendation-ctr-drop",
    "finetune_rejected": "fine-tune-rejected",
    "finetune_promoted": "fine-tune-promoted",
    "finetune_skipped": "fine-tune-skipped",
    "finetune_failed": "fine-tune-failed",
    "finetune_canary": "canary-roll-out",
    "canary_promoted": "canary-roll-out",
    "canary_expired": "canary-roll-out",
    "canary_rolled_back": "canary-rolled-back",
    "rollback": "model-rollback",
    "learner_guard": "learner-guard",
    "model_version_unloadable": "model-version-unloadable",
    "redis_resync": "redis-re-sync",
    "topic_reset": "topic-reset",
}

SEVERITIES: dict[str, Severity] = {
    "hit_rate": Severity.WARNING,
    "quality_not_recovered": Severity.CRITICAL,
    "promotion_regressed": Severity.WARNING,
    "loss": Severity.WARNING,
    "category_share": Severity.WARNING,
    "new_items": Severity.WARNING,
    "session_length": Severity.INFO,
    "ctr": Severity.WARNING,
    "finetune_rejected": Severity.WARNING,
    "finetune_promoted": Severity.INFO,
    "finetune_skipped": Severity.INFO,
    "finetune_failed": Severity.WARNING,
    "finetune_canary": Severity.INFO,
    "canary_promoted": Severity.INFO,
    "canary_expired": Severity.INFO,
    "canary_rolled_back": Severity.WARNING,
    "rollback": Severity.WARNING,
    "learner_guard": Severity.WARNING,
    "model_version_unloadable": Severity.WARNING,
    "redis_resync": Severity.WARNING,
    "topic_reset": Severity.CRITICAL,
}

# Detectors whose alerts start a fine-tune (input shifts only warn; the model may cope).
FINETUNE_TRIGGERS = frozenset({"hit_rate", "loss", "ctr", "new_items"})


def runbook_link(detector: str) -> str:
    return f"{RUNBOOK}#{RUNBOOK_ANCHORS[detector]}"


def make_alert(
    detector: str,
    signal: str,
    level_before: float,
    level_after: float,
    position: int,
    model_version: int | None,
    message: str = "",
    offsets: tuple[StreamOffset, ...] = (),
    now_ms: int | None = None,
) -> Alert:
    """An alert with a fresh id, the detector's severity and its runbook section."""
    return Alert(
        alert_id=uuid.uuid4().hex,
        detector=detector,
        signal=signal,
        level_before=level_before,
        level_after=level_after,
        detected_at_ms=int(time.time() * 1000) if now_ms is None else now_ms,
        position=position,
        model_version=model_version,
        severity=SEVERITIES[detector],
        runbook=runbook_link(detector),
        message=message,
        offsets=offsets,
    )


def alert_as_dict(alert: Alert) -> dict[str, Any]:
    """Plain data (NaN levels become ``None`` so the JSON stays standard)."""
    return {
        "alert_id": alert.alert_id,
        "detector": alert.detector,
        "signal": alert.signal,
        "level_before": _finite(alert.level_before),
        "level_after": _finite(alert.level_after),
        "detected_at_ms": alert.detected_at_ms,
        "position": alert.position,
        "model_version": alert.model_version,
        "severity": alert.severity.value,
        "runbook": alert.runbook,
        "message": alert.message,
        "offsets": [[o.topic, o.partition, o.offset] for o in alert.offsets],
    }


def encode_alert(alert: Alert) -> bytes:
    return orjson.dumps(alert_as_dict(alert))


def decode_alert(raw: bytes | str) -> Alert:
    """Inverse of ``encode_alert``; raises ``ValueError`` on bytes it did not make."""
    try:
        data: dict[str, Any] = orjson.loads(raw)
        return Alert(
            alert_id=data["alert_id"],
            detector=data["detector"],
            signal=data["signal"],
            level_before=_float(data["level_before"]),
            level_after=_float(data["level_after"]),
            detected_at_ms=int(data["detected_at_ms"]),
            position=int(data["position"]),
            model_version=None if data["model_version"] is None else int(data["model_version"]),
            severity=Severity(data["severity"]),
            runbook=data["runbook"],
            message=data.get("message", ""),
            offsets=tuple(StreamOffset(str(t), int(p), int(o)) for t, p, o in data["offsets"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an alert: {exc}") from exc


def append_to_stream(client: RedisClient, key: str, encoded: bytes, maxlen: int) -> None:
    """Append an encoded alert to the capped alerts stream at ``key`` (about ``maxlen``)."""
    client.xadd(key, {STREAM_FIELD: encoded}, maxlen=maxlen, approximate=True)


def alert_from_stream(fields: Mapping[bytes, bytes]) -> Alert | None:
    """The alert of a stream entry's fields; None when it holds none it can decode."""
    raw = fields.get(STREAM_FIELD.encode())
    if raw is None:
        return None
    try:
        return decode_alert(raw)
    except ValueError:
        return None


def _finite(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)
