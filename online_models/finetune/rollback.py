"""Rolling back to an earlier model version: ``streamrec model rollback`` and the drift
monitor's automatic restore after a promotion that did worse live.

Rollback republishes an earlier version's weights as a new current snapshot, announced on
the updates channel: serving swaps to it and the learner reloads and continues from it.
Without a version it goes back to the version that was current before the last promotion
or rollback (``previous_current``), else to the newest older snapshot.
"""

from __future__ import annotations

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


def rollback_model(
    settings: Settings, client: redis.Redis, version: int | None, reason: str = "by hand"
) -> dict[str, Any]:
    """Serve ``version``'s weights again (default: the automatic target); raise an alert
    that says why (``reason``).

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
        message=f"rolled back from v{current} ({reason}): v{version} serves again as "
        f"v{publication.version}",
    )
    send_alert(settings, client, alert)
    return {
        "rolled_back_from": current,
        "restored_version": version,
        "current_version": publication.version,
        "alert_id": alert.alert_id,
    }
