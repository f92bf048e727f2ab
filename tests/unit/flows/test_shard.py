"""FeatureShard against a plain, whole-history reference of the feature definitions.

``reference_features`` recomputes every session's features from its complete event list
in the most direct way; the integration tests import it to check the real flow too.
"""

from __future__ import annotations

import random
from collections import Counter
from itertools import islice

import orjson
import pytest

from flows.event_routing import ShardInput
from flows.feature_config import FeatureConfig
from flows.shard import FeatureShard
from streamrec.events import Event
from streamrec.recorded_events import only_events, read_yoochoose
from streamrec.session_features import FIELDS, SessionFeatures, decode_session_features
from streamrec.training_examples import decode_example
from tests.conftest import SAMPLE_DIR


def reference_features(
    events: list[Event], history_len: int = 50, lateness_ms: int = 5000
) -> dict[str, SessionFeatures]:
    """Features per session from events in arrival order (clicks and purchases)."""
    seen: set[str] = set()
    by_session: dict[str, list[Event]] = {}
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            by_session.setdefault(event.session_id, []).append(event)
    result = {}
    for session_id, session in by_session.items():
        clicks = [e for e in session if e.type == "click"]
        purchases = [e for e in session if e.type == "purchase"]
        on_time, late = [], 0
        for index, click in enumerate(clicks):
            newest_before = max((c.ts for c in clicks[:index]), default=click.ts)
            if click.ts < newest_before - lateness_ms:
                late += 1
            else:
                on_time.append(click)
        for index, purchase in enumerate(purchases):
            newest_before = max((p.ts for p in purchases[:index]), default=purchase.ts)
            if purchase.ts < newest_before - lateness_ms:
                late += 1
        ordered = sorted(on_time, key=lambda e: e.ts)  # stable: ties keep arrival order
        bought: list[str] = []
        for purchase in purchases:
            if purchase.item_id not in bought:
                bought.append(purchase.item_id)
        times = sorted(e.ts for e in session)
        result[session_id] = SessionFeatures(
            items=tuple(e.item_id for e in ordered)[-history_len:],
            clicks=len(clicks),
            purchases=len(purchases),
            bought=tuple(bought[-history_len:]),
            categories=dict(Counter(c.category for c in clicks if c.category is not None)),
            first_ts=times[0],
            last_ts=times[-1],
            gap_ms=times[-1] - times[-2] if len(times) > 1 else 0,
            late=late,
        )
    return result


def sample_events(count: int) -> list[Event]:
    return list(islice(only_events(read_yoochoose(SAMPLE_DIR)), count))


def shuffled_within(events: list[Event], max_shift_ms: int, seed: int) -> list[Event]:
    """Arrival order perturbed: each event may arrive up to ``max_shift_ms`` of event time late."""
    rng = random.Random(seed)
    keyed = [(e.ts + rng.randint(0, max_shift_ms), i, e) for i, e in enumerate(events)]
    return [e for _, _, e in sorted(keyed)]


def decoded_hashes(hashes: dict[str, list[bytes]]) -> dict[str, SessionFeatures]:
    """Session hashes as the shard outputs them (values in ``FIELDS`` order), decoded as
    serving decodes an HGETALL reply."""
    names = [name.encode() for name in FIELDS]
    return {
        sid: decode_session_features(dict(zip(names, values, strict=True)))
        for sid, values in hashes.items()
    }


def run_shard(
    events: list[Event], config: FeatureConfig, chunk: int = 500, restarts: tuple[int, ...] = ()
) -> tuple[dict[str, SessionFeatures], list[bytes]]:
    """Apply ``events`` in chunks, snapshot+restore after ``restarts`` chunks; hashes, examples."""
    shard = FeatureShard(config)
    hashes: dict[str, list[bytes]] = {}
    examples: list[bytes] = []
    for number, start in enumerate(range(0, len(events), chunk)):
        if number in restarts:
            shard = FeatureShard.restore(config, shard.snapshot())
        part = events[start : start + chunk]
        offsets = list(range(start, start + len(part)))
        out = shard.apply([ShardInput("t", 0, part, offsets, [0] * len(part))])
        hashes.update(out.sessions)
        examples.extend(value for _, value, _ in out.examples)
    return decoded_hashes(hashes), examples


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return sample_events(20_000)


def test_shard_matches_reference_on_real_traffic(events: list[Event]) -> None:
    config = FeatureConfig()
    features, _ = run_shard(events, config)
    assert features == reference_features(events)
    assert any(len(f.items) > 5 for f in features.values())


def test_out_of_order_and_duplicates_match_reference(events: list[Event]) -> None:
    config = FeatureConfig(history_len=8, lateness_ms=5000)
    noisy = shuffled_within(events, 20_000, seed=3)
    for place in range(len(noisy) - 100, 0, -7):  # a replay of every 7th event, 100 later
        noisy.insert(place + 100, noisy[place])
    features, examples = run_shard(noisy, config, chunk=333)
    reference = reference_features(noisy, history_len=8, lateness_ms=5000)
    assert features == reference
    assert sum(f.late for f in features.values()) > 0, "the shuffle must create late events"
    example_ids = [decode_example(raw).example_id for raw in examples]
    assert len(example_ids) == len(set(example_ids)), "a duplicate produced a second example"


def test_batching_and_restart_do_not_change_the_result(events: list[Event]) -> None:
    config = FeatureConfig()
    whole, whole_examples = run_shard(events, config, chunk=len(events))
    pieces, piece_examples = run_shard(events, config, chunk=97, restarts=(20, 21, 90, 150))
    assert pieces == whole
    assert piece_examples == whole_examples


def test_examples_cover_every_click_with_history_and_every_purchase(events: list[Event]) -> None:
    config = FeatureConfig()
    _, raw_examples = run_shard(events, config)
    examples = [decode_example(raw) for raw in raw_examples]
    by_id = {example.example_id: example for example in examples}
    purchases = [e for e in events if e.type == "purchase"]
    assert all(by_id[p.event_id].kind == "purchase" for p in purchases)
    assert all(by_id[p.event_id].weight == config.purchase_weight for p in purchases)
    click_examples = [x for x in examples if x.kind == "click"]
    assert all(x.history for x in click_examples)
    first_clicks = {}
    for event in events:
        if event.type == "click":
            first_clicks.setdefault(event.session_id, event.event_id)
    assert not set(first_clicks.values()) & set(by_id), "a first click has no history"
    clicks = sum(e.type == "click" for e in events)
    assert len(click_examples) == clicks - len(first_clicks)
    sample = click_examples[100]
    assert sample.source_topic == "t" and sample.source_offset >= 0


def test_a_topic_read_far_ahead_does_not_evict_sessions_still_receiving_events(
    events: list[Event],
) -> None:
    """In a backlog the sparse purchases topic is read days ahead of the clicks."""
    config = FeatureConfig(session_ttl_ms=2 * 86_400_000, input_topics=2)
    span_ms = max(e.ts for e in events) - min(e.ts for e in events)
    assert span_ms > 4 * config.session_ttl_ms
    purchases = [e for e in events if e.type == "purchase"]
    clicks = [e for e in events if e.type == "click"]
    shard = FeatureShard(config)
    hashes: dict[str, list[bytes]] = {}
    out = shard.apply(
        [ShardInput("purchases", 0, purchases, list(range(len(purchases))), [0] * len(purchases))]
    )
    hashes.update(out.sessions)
    evicted = out.evicted
    for start in range(0, len(clicks), 1000):
        part = clicks[start : start + 1000]
        out = shard.apply([ShardInput("clicks", 0, part, list(range(len(part))), [0] * len(part))])
        hashes.update(out.sessions)
        evicted += out.evicted
    assert decoded_hashes(hashes) == reference_features(purchases + clicks)
    assert evicted > 0, "sessions idle beyond the TTL on every partition must still go"


def test_a_full_state_is_every_live_session_in_chunks_as_written(events: list[Event]) -> None:
    config = FeatureConfig()
    shard = FeatureShard(config)
    written: dict[str, list[bytes]] = {}
    for start in range(0, 5000, 500):
        part = events[start : start + 500]
        out = shard.apply([ShardInput("t", 0, part, list(range(len(part))), [0] * len(part))])
        written.update(out.sessions)
    chunks = shard.full_state(chunk=300)
    assert all(len(chunk.sessions) <= 300 for chunk in chunks)
    full = {sid: fields for chunk in chunks for sid, fields in chunk.sessions.items()}
    assert full == written and full.keys() == shard.sessions.keys()
    assert not any(chunk.examples or chunk.popularity or chunk.produce_ms for chunk in chunks)


def test_the_synced_marker_survives_a_restart_and_old_snapshots_have_none() -> None:
    config = FeatureConfig()
    shard = FeatureShard(config)
    shard.synced = "2026-01-01T00:00:00Z-abc"
    assert FeatureShard.restore(config, shard.snapshot()).synced == shard.synced
    old = orjson.loads(shard.snapshot())
    del old["synced"]
    assert FeatureShard.restore(config, orjson.dumps(old)).synced is None
