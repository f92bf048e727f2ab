"""Reading alerts back from the Redis alerts stream (``streamrec alerts tail``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
from rich.console import Console

from streamrec.alerts import Alert, alert_as_dict, alert_from_stream
from streamrec.redis_connection import RedisClient

_SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


def latest_alerts(client: RedisClient, key: str, count: int) -> list[tuple[str, Alert]]:
    """The newest ``count`` alerts as (stream id, alert), oldest first; unreadable ones skipped."""
    entries = client.xrevrange(key, count=count) if count > 0 else []
    return [pair for pair in map(_decode_entry, reversed(entries)) if pair is not None]


def follow_alerts(
    client: RedisClient, key: str, cursor: str, stop: threading.Event, block_ms: int = 500
) -> Iterator[Alert]:
    """Alerts added after ``cursor`` (``$``: after now), as they arrive, until ``stop``."""
    while not stop.is_set():
        for _, entries in client.xread({key: cursor}, block=block_ms) or []:
            for entry in entries:
                pair = _decode_entry(entry)
                cursor = _text(entry[0])
                if pair is not None:
                    yield pair[1]


def alert_line(alert: Alert) -> str:
    """One human line: when, severity, detector, levels, model version, runbook."""
    when = datetime.fromtimestamp(alert.detected_at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"{when}Z {alert.severity.value:<8} {alert.detector:<18} {alert.signal} "
        f"{alert.level_before:.4g} -> {alert.level_after:.4g} at {alert.position} "
        f"model v{alert.model_version} | {alert.message} | {alert.runbook}"
    )


def print_alert(alert: Alert, as_json: bool) -> None:
    """Alerts go to stdout: as JSON lines for tools, or one styled line for people."""
    if as_json:
        print(orjson.dumps(alert_as_dict(alert)).decode(), flush=True)
        return
    style = _SEVERITY_STYLE.get(alert.severity.value, "")
    Console(soft_wrap=True).print(alert_line(alert), style=style, markup=False, highlight=False)


def _decode_entry(entry: tuple[bytes | str, dict[bytes, bytes]]) -> tuple[str, Alert] | None:
    entry_id, fields = entry
    alert = alert_from_stream(fields)
    return None if alert is None else (_text(entry_id), alert)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
