"""What ``streamrec model status`` and ``streamrec model canary`` show and do
(``streamrec model rollback`` is ``online_models.finetune.rollback``).

Status joins the weight registry (current version, its age, the newest version's age as
the freshness of the online learner), the learner's signal stream (when it last reported)
and the drift status hash (last drift alert, last fine-tune and its verdict, the canary
being rolled out or the last one's verdict).

The canary view is the canary the registry's pointer names (or, with none, the last one):
since when, the canary arm's share, both arms' counts as the drift monitor's watch last
recorded them. Promoting or dropping it by hand goes through the watch's own
``promote_canary`` / ``drop_canary`` with the reason ``by hand``, so the record, the alert
and what followers see are the same as after an automatic verdict.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from online_models.finetune.canary_rollout import drop_canary, promote_canary, record_canary_start
from online_models.finetune.status import read_status
from online_models.registry.weight_registry import WeightRegistry
from streamrec.proportions import rate
from streamrec.redis_connection import RedisClient
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings

BY_HAND = "by hand"


def model_status_report(settings: Settings, client: RedisClient) -> dict[str, Any]:
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


def canary_view(
    settings: Settings, pointer: int | None, status: Mapping[str, str], now_ms: int
) -> dict[str, Any]:
    """What ``streamrec model canary`` shows: the canary ``pointer`` names, else the last
    one the drift status hash recorded (``running`` says which). Fields the hash does not
    have for that canary (a pointer set by hand the monitor has not seen yet) are None;
    times in seconds, rates None without impressions."""
    recorded = _int(status.get("canary_version"))
    version = recorded if pointer is None else pointer
    fields = status if version is not None and version == recorded else {}
    started_ms = _int(fields.get("canary_started_ms"))
    deadline_in_s = None
    if pointer is not None and started_ms is not None:
        deadline_ms = started_ms + settings.drift.canary_deadline_s * 1000
        deadline_in_s = round((deadline_ms - now_ms) / 1000, 3)
    arms = settings.experiment.arms
    canary = (_int(fields.get("canary_impressions")), _int(fields.get("canary_clicked")))
    control = (
        _int(fields.get("canary_control_impressions")),
        _int(fields.get("canary_control_clicked")),
    )
    return {
        "running": pointer is not None,
        "canary_version": version,
        "control_version": _int(fields.get("canary_control_version")),
        "verdict": fields.get("canary_verdict"),
        "reason": fields.get("canary_reason") or None,
        "started_age_s": _age_s(now_ms, started_ms),
        "deadline_in_s": deadline_in_s,
        "arm_share": round(arms.get("canary", 0.0) / sum(arms.values()), 6),
        "min_impressions": settings.drift.canary_min_impressions,
        "canary_impressions": canary[0],
        "canary_ctr": _ctr(*canary),
        "control_impressions": control[0],
        "control_ctr": _ctr(*control),
    }


def canary_report(settings: Settings, client: RedisClient) -> dict[str, Any]:
    """``canary_view`` of the registry's pointer and the drift status hash now."""
    keys = RedisKeys(settings.redis.key_prefix)
    pointer = WeightRegistry(settings, client).canary_version()
    return canary_view(settings, pointer, read_status(client, keys), int(time.time() * 1000))


def drop_canary_by_hand(settings: Settings, client: RedisClient, note: str = "") -> dict[str, Any]:
    """Stop serving the canary like an automatic roll-back (verdict ``rolled_back``, a
    ``canary_rolled_back`` alert); ``LookupError`` when there is none."""
    version, ctrs, impressions, reason = _canary_to_end(settings, client, note)
    if not drop_canary(settings, client, version, ctrs, impressions, worse=True, reason=reason):
        raise LookupError(f"canary v{version} was ended meanwhile (see streamrec model canary)")
    return {"dropped_version": version, "reason": reason}


def promote_canary_by_hand(
    settings: Settings, client: RedisClient, note: str = ""
) -> dict[str, Any]:
    """Make the canary's weights current like an automatic promotion (a new snapshot,
    ``previous_current`` recorded, a ``canary_promoted`` alert). ``LookupError`` when there
    is no canary; ``LookupError`` / ``RuntimeError`` when it does not load or publish
    (nothing changed then)."""
    version, ctrs, impressions, reason = _canary_to_end(settings, client, note)
    previous = WeightRegistry(settings, client).current_version()
    current = promote_canary(settings, client, version, ctrs, impressions, reason)
    return {
        "promoted_version": version,
        "current_version": current,
        "previous_current": previous,
        "reason": reason,
    }


def _canary_to_end(
    settings: Settings, client: RedisClient, note: str
) -> tuple[int, tuple[float, float], int, str]:
    """The running canary's version, the alert's levels (control and canary CTR, NaN when
    not counted) and position (its impressions), and the reason."""
    view = canary_report(settings, client)
    version = view["canary_version"]
    if not view["running"] or version is None:
        raise LookupError("no canary is rolled out")
    if view["verdict"] is None:  # set by hand, not seen by a watch: record it as the watch would
        keys = RedisKeys(settings.redis.key_prefix)
        current = WeightRegistry(settings, client).current_version()
        record_canary_start(client, keys, version, int(time.time() * 1000), current)
    ctrs = (_nan_if_none(view["control_ctr"]), _nan_if_none(view["canary_ctr"]))
    reason = f"{BY_HAND}: {note}" if note else BY_HAND
    return version, ctrs, view["canary_impressions"] or 0, reason


def _ctr(impressions: int | None, clicked: int | None) -> float | None:
    if impressions is None or clicked is None or impressions == 0:
        return None
    return round(rate(clicked, impressions), 6)


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


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
