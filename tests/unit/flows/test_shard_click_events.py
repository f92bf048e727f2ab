"""The session hash names each item's click (event id and time), across snapshot/restore,
and names none when the flow is told not to keep them."""

from __future__ import annotations

from flows.event_routing import ShardInput
from flows.feature_config import FeatureConfig
from flows.shard import FeatureShard
from streamrec.session_features import FIELDS, SessionFeatures, decode_session_features
from tests.unit.flows.test_shard import sample_events

NAMES = [name.encode() for name in FIELDS]


def written(config: FeatureConfig, restart_every: int = 700) -> dict[str, SessionFeatures]:
    """The last hash the shard wrote per session (decoded with events), restarting from a
    snapshot every ``restart_every`` events."""
    events = sample_events(6000)
    shard = FeatureShard(config)
    hashes: dict[str, list[bytes]] = {}
    for start in range(0, len(events), restart_every):
        shard = FeatureShard.restore(config, shard.snapshot())
        part = events[start : start + restart_every]
        offsets = list(range(start, start + len(part)))
        hashes.update(shard.apply([ShardInput("t", 0, part, offsets, [0] * len(part))]).sessions)
    return {
        sid: decode_session_features(dict(zip(NAMES, values, strict=True)), with_events=True)
        for sid, values in hashes.items()
    }


def test_every_item_is_named_by_its_own_click_event() -> None:
    clicks = {e.event_id: e for e in sample_events(6000) if e.type == "click"}
    sessions = written(FeatureConfig())
    assert any(len(features.items) > 2 for features in sessions.values())
    for session_id, features in sessions.items():
        assert len(features.events) == len(features.items)
        for item_id, (event_id, ts) in zip(features.items, features.events, strict=True):
            click = clicks[event_id]
            assert (click.session_id, click.item_id, click.ts) == (session_id, item_id, ts)


def test_without_click_events_the_hash_names_none() -> None:
    sessions = written(FeatureConfig(click_events=False))
    assert sessions and all(features.events == () for features in sessions.values())
