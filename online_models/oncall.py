"""What ``streamrec model status`` shows (``streamrec model rollback`` is
``online_models.finetune.rollback``).

Status joins the weight registry (current version, its age, the newest version's age as
the freshness of the online learner), the learner's signal stream (when it last reported)
and the drift status hash (last drift alert, last fine-tune and its verdict, the canary
being rolled out or the last one's verdict).
"""

from __future__ import annotations

import time
from typing import Any

import redis

from online_models.finetune.status import read_status
from online_models.registry.weight_registry import WeightRegistry
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings


def model_status_report(settings: Settings, client: redis.Redis) -> dict[str, Any]:
    """Plain data for the status table / ``--json``; ages in seconds (None when unknown)."""
    keys = RedisKeys(settings.redis.key_prefix)
    registry = WeightRegistry(settings, client)
    now_ms = int(time.time() * 1000)
    current = registry.current_version()
    info = registry.info(current) if current is not None else None
    newest = registry.versions(limit=1)
    status = read_status(client, keys)
    last_signal = client.xrevrange(keys.learner_signals, count=1)
    return {
        "current_version": current,
        "current_kind": info.kind if info else None,
        "current_source": info.source if info else None,
        "current_age_s": _age_s(now_ms, info.created_ms if info else None),
        "newest_version": newest[-1].version if newest else None,
        "freshness_s": _age_s(now_ms, newest[-1].created_ms if newest else None),
        "last_signal_age_s": _age_s(
            now_ms, int(last_signal[0][0].split(b"-")[0]) if last_signal else None
        ),
        "last_drift_detector": status.get("drift_detector"),
        "last_drift_age_s": _age_s(now_ms, _int(status.get("drift_at_ms"))),
        "last_drift_message": status.get("drift_message"),
        "last_finetune_id": status.get("finetune_id"),
        "last_finetune_trigger": status.get("finetune_trigger"),
        "last_finetune_verdict": status.get("finetune_verdict"),
        "last_finetune_reason": status.get("finetune_reason"),
        "last_finetune_age_s": _age_s(now_ms, _int(status.get("finetune_finished_ms"))),
        "last_finetune_candidate_hr": _float(status.get("finetune_candidate_hr")),
        "last_finetune_serving_hr": _float(status.get("finetune_serving_hr")),
        "canary_version": registry.canary_version(),
        "last_canary_version": _int(status.get("canary_version")),
        "last_canary_verdict": status.get("canary_verdict"),
        "last_canary_reason": status.get("canary_reason"),
        "last_canary_age_s": _age_s(now_ms, _int(status.get("canary_started_ms"))),
        "finetune_lock": _text(client.get(keys.finetune_lock)),
        "finetune_lock_ttl_s": _ttl_s(client.pttl(keys.finetune_lock)),
    }


def _age_s(now_ms: int, then_ms: int | None) -> float | None:
    return None if then_ms is None else round((now_ms - then_ms) / 1000, 3)


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _ttl_s(pttl: int) -> float | None:
    return None if pttl < 0 else pttl / 1000
