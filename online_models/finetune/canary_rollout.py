"""Rolling a fine-tuned version out as a canary, then promoting or dropping it.

With ``STREAMREC_DRIFT_ROLLOUT=canary`` the fine-tune job does not make a candidate that
passed its gate current: ``start_canary`` points the registry's canary pointer at it, and
serving shows it to the experiment's ``canary`` arm. The drift monitor's canary watch
(``online_models/drift/canary_loop.py``) compares that arm with the control and ends the
canary with one of:

- ``promote_canary``: the canary's weights are published again as a new current snapshot
  (``source`` ``canary:v<N>``), like a rollback does, so every follower moves forward to a
  new number and the promotion watch (``promotion_watch``) judges the new lineage from
  there; ``previous_current`` is recorded, so an automatic rollback returns to the
  control's version;
- ``drop_canary``: the pointer is cleared (serving's canary arm falls back to the
  control's model); ``canary_rolled_back`` (warning) when the canary did worse,
  ``canary_expired`` (info) when the deadline kept the control.

Each sends its alert (levels: the control's and the canary's CTR, position: the canary's
resolved impressions) through every sink and records the canary's state in the drift
status hash (``canary_*`` fields, shown by ``streamrec model status`` and ``streamrec
model canary``), which is also what lets a restarted watch resume: ``canary_started_ms``
says where to re-read from. The watch also records both arms' counts so far
(``record_canary_counts``), for on-call to read; it never reads them back (a restarted
watch counts again). ``streamrec model canary --promote|--drop`` ends a canary by hand
through the same two functions (``online_models/oncall.py``).
"""

from __future__ import annotations

import time

import redis

from online_models.alerts.sinks import send_alert
from online_models.finetune.status import read_status, record_finetune
from online_models.registry.weight_registry import WeightRegistry
from streamrec.alerts import make_alert
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings

# The drift status hash's fields for the counts (canary arm, then control arm).
COUNT_FIELDS = (
    "canary_impressions",
    "canary_clicked",
    "canary_control_impressions",
    "canary_control_clicked",
)


def start_canary(
    settings: Settings, client: redis.Redis, version: int, control: int | None
) -> None:
    """Serve ``version`` on the canary arm from now on (``control``: the current version)."""
    keys = RedisKeys(settings.redis.key_prefix)
    record_canary_start(client, keys, version, int(time.time() * 1000), control)
    WeightRegistry(settings, client).set_canary(version)  # after the record: a watch reads it


def record_canary_start(
    client: redis.Redis, keys: RedisKeys, version: int, now_ms: int, control: int | None = None
) -> None:
    """Record that the canary of ``version`` runs from ``now_ms`` (the watch records a
    canary set by hand the same way, so a restart resumes either alike)."""
    record_finetune(
        client,
        keys,
        {
            "canary_version": str(version),
            "canary_started_ms": str(now_ms),
            "canary_control_version": str(control or ""),
            "canary_verdict": "running",
            "canary_reason": "",
            **{field: "" for field in COUNT_FIELDS},
        },
    )


def record_canary_counts(
    client: redis.Redis, keys: RedisKeys, *, canary: tuple[int, int], control: tuple[int, int]
) -> None:
    """Record both arms' (resolved impressions, clicked impressions) so far."""
    values = (*canary, *control)
    record_finetune(client, keys, dict(zip(COUNT_FIELDS, map(str, values), strict=True)))


def canary_started_ms(client: redis.Redis, keys: RedisKeys, version: int) -> int | None:
    """When the canary of ``version`` started (None: not recorded, e.g. set by hand)."""
    status = read_status(client, keys)
    started = status.get("canary_started_ms", "")
    return int(started) if status.get("canary_version") == str(version) and started else None


def promote_canary(
    settings: Settings, client: redis.Redis, version: int, ctrs: tuple[float, float],
    impressions: int, reason: str,
) -> int:  # fmt: skip
    """Make the canary's weights current (a new snapshot); returns the new version.

    ``ctrs``: the control's and the canary's CTR, ``impressions``: the canary's (for the
    alert). ``LookupError`` when ``version`` is no longer the canary (ended meanwhile by
    the watch or on-call) or does not load completely (nothing is changed).
    """
    keys = RedisKeys(settings.redis.key_prefix)
    registry = WeightRegistry(settings, client)
    if registry.canary_version() != version:
        raise LookupError(f"v{version} is no longer the canary")
    weights = registry.load(version)
    if weights.version != version:
        raise LookupError(f"canary v{version} does not load (the registry fell back)")
    previous = registry.current_version()
    publication = registry.publish_snapshot(weights, source=f"canary:v{version}")
    if not publication.current:
        raise RuntimeError(f"published v{publication.version} but it did not become current")
    registry.clear_canary(only_if=version)
    _finish(client, keys, "promoted", reason)
    record_finetune(client, keys, {"previous_current": str(previous or "")})
    send_alert(
        settings,
        client,
        make_alert(
            "canary_promoted",
            "ctr",
            *ctrs,
            impressions,
            publication.version,
            message=f"canary v{version} promoted as v{publication.version}: {reason}",
        ),
    )
    return publication.version


def drop_canary(
    settings: Settings, client: redis.Redis, version: int, ctrs: tuple[float, float],
    impressions: int, *, worse: bool, reason: str,
) -> bool:  # fmt: skip
    """Stop serving the canary ``version``; the control's lineage stays current
    (``worse``: it did worse, else the deadline kept the control; ``ctrs`` and
    ``impressions`` as for ``promote_canary``).

    False (and nothing recorded or sent) when ``version`` was no longer the canary: who
    ended it first (the watch or on-call) has recorded why.
    """
    keys = RedisKeys(settings.redis.key_prefix)
    if not WeightRegistry(settings, client).clear_canary(only_if=version):
        return False
    _finish(client, keys, "rolled_back" if worse else "kept_control", reason)
    detector = "canary_rolled_back" if worse else "canary_expired"
    what = "rolled back" if worse else "dropped at its deadline"
    send_alert(
        settings,
        client,
        make_alert(
            detector,
            "ctr",
            *ctrs,
            impressions,
            version,
            message=f"canary v{version} {what}: {reason}",
        ),
    )
    return True


def _finish(client: redis.Redis, keys: RedisKeys, verdict: str, reason: str) -> None:
    record_finetune(
        client,
        keys,
        {
            "canary_verdict": verdict,
            "canary_reason": reason[:500],
            "canary_finished_ms": str(int(time.time() * 1000)),
        },
    )
