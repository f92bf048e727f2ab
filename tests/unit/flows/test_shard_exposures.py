"""The flow's exposure step as plain Python: a shard joins impressions with what its
sessions did next, emits one exposure example per closed outcome, and keeps open ones
across a restart."""

from __future__ import annotations

import orjson

from flows.event_routing import ShardInput
from flows.exposure_counts import ExposureCounts
from flows.exposure_examples import exposure_example
from flows.feature_config import FeatureConfig
from flows.shard import FeatureShard, ShardOutput
from streamrec.events import Event
from streamrec.exposure_outcomes import ExposureOutcome
from streamrec.training_examples import (
    EXPOSURE,
    TrainingExample,
    decode_example,
    encode_example,
    is_next_click,
)

T0 = 1_700_000_000_000
HORIZON = 60_000
CONFIG = FeatureConfig(exposure_horizon_ms=HORIZON)


def click(eid: str, session: str, ts: int, item: str, rid: str | None = None) -> Event:
    return Event(eid, "click", session, T0 + ts, item_id=item, request_id=rid)


def shown(rid: str, session: str, ts: int, *items: str) -> Event:
    return Event("imp-" + rid, "impression", session, T0 + ts, request_id=rid, items=items)


def apply(shard: FeatureShard, *events: Event) -> ShardOutput:
    offsets = list(range(len(events)))
    return shard.apply([ShardInput("t", 0, list(events), offsets, [0] * len(events))])


def exposures(out: ShardOutput) -> list[TrainingExample]:
    decoded = [decode_example(value) for _, value, _ in out.examples]
    return [example for example in decoded if example.kind == EXPOSURE]


def test_a_click_on_a_shown_item_is_a_positive_and_nothing_is_a_negative() -> None:
    shard = FeatureShard(CONFIG)
    apply(shard, click("c0", "s", 0, "h1"), click("c1", "t", 0, "h2"))
    out = apply(
        shard,
        shown("r1", "s", 10, "a", "b", "c"),
        shown("r2", "t", 10, "x", "y"),
        click("c2", "s", 20, "b", "r1"),
        click("c3", "u", HORIZON + 11, "z"),  # another session moves event time past both
    )
    by_id = {e.example_id: e for e in exposures(out)}
    positive, negative = by_id["exposure:r1"], by_id["exposure:r2"]
    assert (positive.history, positive.target_item, positive.negatives) == (
        ("h1",),
        "b",
        ("a", "c"),
    )
    assert (negative.history, negative.target_item, negative.negatives) == (("h2",), "", ("x", "y"))
    assert not is_next_click(positive) and positive.ts == T0 + 10
    assert [o.was_clicked for o in out.exposures] == [True, False]
    next_clicks = [e.example_id for e in decode_all(out) if is_next_click(e)]
    assert next_clicks == ["c2"], "the click keeps its own example (u's first click has none)"


def decode_all(out: ShardOutput) -> list[TrainingExample]:
    return [decode_example(value) for _, value, _ in out.examples]


def test_an_open_outcome_survives_a_restart_and_closes_once() -> None:
    shard = FeatureShard(CONFIG)
    apply(shard, click("c0", "s", 0, "h1"), shown("r1", "s", 10, "a", "b"))
    restored = FeatureShard.restore(CONFIG, shard.snapshot())
    first = apply(restored, click("c1", "s", 20, "a", "r1"), click("c2", "u", HORIZON + 11, "z"))
    again = apply(restored, click("c3", "u", 3 * HORIZON, "z"))
    assert [(e.example_id, e.target_item) for e in exposures(first)] == [("exposure:r1", "a")]
    assert exposures(again) == []


def test_repeated_and_late_impressions_are_dropped_and_counted() -> None:
    shard = FeatureShard(CONFIG)
    apply(shard, click("c0", "s", 2 * HORIZON, "h1"))
    late = apply(shard, shown("r0", "s", 0, "a"))
    assert late.late == 1 and shard.exposures.open_count == 0
    apply(shard, shown("r1", "s", 2 * HORIZON, "a"))
    repeat = apply(shard, shown("r1", "s", 2 * HORIZON, "a"))
    assert repeat.duplicates == 1 and shard.exposures.open_count == 1


def test_impressions_do_not_move_the_event_time_that_evicts_sessions() -> None:
    shard = FeatureShard(FeatureConfig(exposure_horizon_ms=HORIZON, input_topics=1))
    apply(shard, shown("r1", "s", 0, "a"))
    assert shard.watermark_ms() == -1 and shard.sessions == {}


def test_an_exposure_example_round_trips_through_the_examples_topic_encoding() -> None:
    outcome = ExposureOutcome("r", "s", 5, ("a", "b"), 3, "online", clicked=("b",),
                              purchased=("b",))  # fmt: skip
    example = exposure_example(outcome, ("h",), "impressions", 1, 7)
    assert decode_example(encode_example(example)) == example
    assert (example.target_item, example.negatives, example.bought) == ("b", ("a",), True)


def test_counts_are_absolute_and_survive_a_restart() -> None:
    counts = ExposureCounts()
    first = ExposureOutcome("r1", "s", 0, ("a", "b"), None, None, clicked=("a",))
    second = ExposureOutcome("r2", "t", 0, ("a",), None, None)
    update = counts.add([first, second])
    assert (update.shown, update.clicked) == ({"a": 2, "b": 1}, {"a": 1})
    restored = ExposureCounts.restore(counts.snapshot())
    assert restored.add([second]).shown == {"a": 3}, "the new total, not an increment"
    assert restored.full_update().clicked == {"a": 1}
    assert orjson.loads(restored.snapshot())[0] == {"a": 3, "b": 1}
    assert not ExposureCounts().add([])
