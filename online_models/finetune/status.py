"""Shared drift/fine-tune state in Redis: the status hash and the fine-tune lock.

The status hash (``RedisKeys.drift_status``) is what ``streamrec model status`` shows: the
last drift alert, the last fine-tune and its verdict, and the monitor's signal cursor.
The lock (``RedisKeys.finetune_lock``) is taken with SET NX for the run's timeout, then
re-armed for the cooldown when the run ends; whoever cannot take it does not start a
fine-tune. Values are strings (Redis hash fields).
"""

from __future__ import annotations

import redis

from streamrec.alerts import Alert
from streamrec.redis_keys import RedisKeys


def read_status(client: redis.Redis, keys: RedisKeys) -> dict[str, str]:
    raw = client.hgetall(keys.drift_status)
    return {key.decode(): value.decode() for key, value in raw.items()}


def save_signal_cursor(client: redis.Redis, keys: RedisKeys, cursor: str) -> None:
    client.hset(keys.drift_status, "signals_cursor", cursor)


def record_drift(client: redis.Redis, keys: RedisKeys, alert: Alert) -> None:
    client.hset(
        keys.drift_status,
        mapping={
            "drift_alert_id": alert.alert_id,
            "drift_detector": alert.detector,
            "drift_at_ms": str(alert.detected_at_ms),
            "drift_message": alert.message,
        },
    )


def acquire_finetune_lock(client: redis.Redis, keys: RedisKeys, hold_s: float) -> bool:
    """Take the lock for ``hold_s`` seconds; False while a run or its cooldown holds it."""
    return bool(client.set(keys.finetune_lock, "running", nx=True, px=max(1, int(hold_s * 1000))))


def start_cooldown(client: redis.Redis, keys: RedisKeys, cooldown_s: float) -> None:
    """Keep the lock for ``cooldown_s`` more seconds (released at once when 0)."""
    if cooldown_s <= 0:
        client.delete(keys.finetune_lock)
        return
    client.set(keys.finetune_lock, "cooldown", px=int(cooldown_s * 1000))


def record_finetune(client: redis.Redis, keys: RedisKeys, fields: dict[str, str]) -> None:
    """Write (part of) the fine-tune record; ``finetune_verdict`` is ``running`` until done."""
    client.hset(keys.drift_status, mapping=fields)
