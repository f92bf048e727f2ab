"""What ``streamrec model status`` shows and what ``streamrec model rollback`` does.

Status joins the weight registry (current version, its age, the newest version's age as
the freshness of the online learner), the learner's signal stream (when it last reported)
and the drift status hash (last drift alert, last fine-tune and its verdict).

Rollback republishes an earlier version's weights as a new current snapshot, announced on
the updates channel: serving swaps to it and the learner reloads and continues from it.
Without a version it goes back to the version that was current before the last promotion
or rollback (``previous_current``), else to the newest older snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis

from online_models.alerts.sinks import send_alert
from online_models.finetune.status import read_status, record_finetune
from online_models.registry.weight_registry import VersionInfo, WeightRegistry
from streamrec.alerts import make_alert
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings


def choose_rollback_target(
    infos: Sequence[VersionInfo], current: int, previous_current: int | None
) -> int:
    """The version a bare ``rollback`` goes to; ``LookupError`` when there is none."""
    known = {info.version for info in infos}
    if previous_current is not None and previous_current != current and previous_current in known:
        return previous_current
    older = [info for info in infos if info.version < current]
    snapshots = [info.version for info in older if info.kind == "snapshot"]
    if snapshots:
        return max(snapshots)
    if older:
        return max(info.version for info in older)
    raise LookupError(f"no version older than the current one ({current})")


def rollback_model(settings: Settings, client: redis.Redis, version: int | None) -> dict[str, Any]:
    """Serve ``version``'s weights again (default: the automatic target); raise an alert.

    The weights are republished as a new snapshot (``source`` ``rollback:v<N>``) rather than
    by moving the pointer back: followers (serving, the learner) only move forward, so a new
    number is what every one of them picks up, and the history stays append-only.
    """
    keys = RedisKeys(settings.redis.key_prefix)
    registry = WeightRegistry(settings, client)
    current = registry.current_version()
    if current is None:
        raise LookupError("no model version is current yet")
    if version is None:
        previous = read_status(client, keys).get("previous_current")
        version = choose_rollback_target(
            registry.versions(), current, int(previous) if previous else None
        )
    if registry.info(version) is None:
        raise KeyError(f"no model version {version}")
    weights = registry.load(version)
    if weights.version != version:
        raise LookupError(f"version {version} does not load (the registry fell back)")
    publication = registry.publish_snapshot(weights, source=f"rollback:v{version}")
    if not publication.current:
        raise RuntimeError(f"published v{publication.version} but it did not become current")
    record_finetune(client, keys, {"previous_current": str(current)})
    alert = make_alert(
        "rollback",
        "model_version",
        float(current),
        float(version),
        0,
        publication.version,
        message=f"rolled back from v{current}: v{version} serves again as v{publication.version}",
    )
    send_alert(settings, client, alert)
    return {
        "rolled_back_from": current,
        "restored_version": version,
        "current_version": publication.version,
        "alert_id": alert.alert_id,
    }


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
