"""Signal extraction for the drift detectors (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from online_models.drift.signals import CtrTracker, InputSignals, spread_hits
from streamrec.training_examples import TrainingExample


def example(
    target: str, category: str | None = "1", session: str = "s", ts: int = 0
) -> TrainingExample:
    return TrainingExample("e", session, ("h",), target, ts, category=category)


@given(st.integers(0, 600), st.integers(1, 600))
def test_spread_hits_keeps_the_count_and_spreads_evenly(hits: int, examples: int) -> None:
    values = list(spread_hits(hits, examples))
    assert len(values) == examples
    assert sum(values) == min(hits, examples)
    half = examples // 2
    # Each half holds its share of the hits (no within-batch step a detector could see).
    assert abs(sum(values[:half]) - min(hits, examples) * half / examples) <= 1


def inputs(capacity: int = 10) -> InputSignals:
    return InputSignals(
        reference_size=4, seen_capacity=capacity, max_session_len=10, session_idle_ms=1000
    )


def test_category_reference_is_learned_then_frozen() -> None:
    signals = inputs()
    for category in ("a", "a", "a", "b"):
        assert signals.category_share(example("x", category)) is None
    assert signals.category_share(example("x", "a")) == 0.75
    assert signals.category_share(example("x", "c")) == 0.0
    signals.relearn_categories()
    assert signals.category_share(example("x", "c")) is None


def test_never_seen_remembers_items_within_capacity() -> None:
    signals = inputs(capacity=2)
    assert [signals.never_seen(example(i)) for i in ("a", "a", "b", "c", "b", "a")] == [
        1.0, 0.0, 1.0, 1.0, 0.0, 1.0,
    ]  # fmt: skip


def test_a_session_length_is_reported_once_the_session_is_idle() -> None:
    signals = inputs()
    assert signals.ended_sessions(example("a", session="s1", ts=0)) == []
    assert signals.ended_sessions(example("a", session="s1", ts=500)) == []
    assert signals.ended_sessions(example("a", session="s2", ts=1200)) == []
    assert signals.ended_sessions(example("a", session="s2", ts=1600)) == [0.2]  # s1: 2 of 10
    many = [signals.ended_sessions(example("a", session="s3", ts=3000 + i)) for i in range(20)]
    assert many[0] == [0.2] and all(m == [] for m in many[1:])  # s2 ended; s3 still open


def test_ctr_tracker_matches_clicks_and_expires_misses() -> None:
    tracker = CtrTracker(horizon=2)
    assert tracker.impression("r1", ("a", "b"), 0, 10) == []
    assert tracker.click("r1", "z") is None  # not one of the recommended items
    hit = tracker.click("r1", "b")
    assert hit is not None and hit.clicked and hit.offset == 10
    assert tracker.click("r1", "b") is None  # already resolved
    assert tracker.impression("r2", ("a",), 1, 11) == []
    assert tracker.impression("r3", ("a",), 1, 12) == []
    expired = tracker.impression("r4", ("a",), 0, 13)
    assert [(o.request_id, o.clicked) for o in expired] == [("r2", False)]
    assert tracker.click(None, "a") is None
