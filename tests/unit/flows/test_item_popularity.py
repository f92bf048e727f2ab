"""Decayed item popularity: ranking by recent weight, exact rebases, bounded memory."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from flows.item_popularity import REBASE_HALF_LIVES, ItemPopularity

HOUR_MS = 3_600_000
T0 = 1_400_000_000_000


def test_a_recent_event_outweighs_an_old_one_by_the_half_life() -> None:
    popularity = ItemPopularity(HOUR_MS, 100)
    update = popularity.add([("old", T0, 1.0), ("new", T0 + HOUR_MS, 1.0)])
    assert update.scores["new"] == pytest.approx(2 * update.scores["old"])
    assert set(update.scores) == {"old", "new"} and not update.rebuild


def test_only_touched_items_are_returned() -> None:
    popularity = ItemPopularity(HOUR_MS, 100)
    popularity.add([("a", T0, 1.0), ("b", T0, 1.0)])
    assert set(popularity.add([("a", T0 + 1, 1.0)]).scores) == {"a"}


def test_rebase_scales_every_score_and_asks_for_a_rebuild() -> None:
    popularity = ItemPopularity(HOUR_MS, 100)
    popularity.add([("a", T0, 1.0), ("b", T0, 3.0)])
    later = T0 + 2 * REBASE_HALF_LIVES * HOUR_MS
    update = popularity.add([("c", later, 1.0)])
    assert update.rebuild and set(update.scores) == {"a", "b", "c"}
    assert update.scores["b"] == pytest.approx(3 * update.scores["a"])
    assert update.scores["c"] > update.scores["b"]
    assert all(math.isfinite(score) for score in update.scores.values())


def test_memory_is_bounded_and_keeps_the_most_popular() -> None:
    popularity = ItemPopularity(HOUR_MS, 10)
    events = [(f"i{n}", T0 + n, float(n)) for n in range(25)]
    update = popularity.add(events)
    assert len(popularity.scores) <= 10
    assert "i24" in update.scores and "i0" not in popularity.scores
    assert update.rebuild


def test_arrival_order_does_not_change_scores() -> None:
    events = [(f"i{n % 7}", T0 + n * 60_000, 1.0 + n % 3) for n in range(300)]
    shuffled = events[:]
    random.Random(1).shuffle(shuffled)
    one, two = ItemPopularity(HOUR_MS, 100), ItemPopularity(HOUR_MS, 100)
    for start in range(0, 300, 50):
        one.add(events[start : start + 50])
        two.add(shuffled[start : start + 50])
    assert one.scores == pytest.approx(two.scores, rel=1e-12)


def test_snapshot_and_restore_continue_where_they_left_off() -> None:
    events = [(f"i{n % 5}", T0 + n * 60_000, 1.0) for n in range(100)]
    straight = ItemPopularity(HOUR_MS, 100)
    straight.add(events)
    first = ItemPopularity(HOUR_MS, 100)
    first.add(events[:40])
    resumed = ItemPopularity.restore(HOUR_MS, 100, first.snapshot())
    resumed.add(events[40:])
    assert resumed.scores == pytest.approx(straight.scores, rel=1e-12)
    assert ItemPopularity.restore(HOUR_MS, 100, None).scores == {}


def test_a_full_update_rebuilds_the_zset_from_every_score() -> None:
    popularity = ItemPopularity(HOUR_MS, 100)
    popularity.add([("a", T0, 1.0), ("b", T0 + 1, 2.0)])
    popularity.add([("a", T0 + 2, 1.0)])
    full = popularity.full_update()
    assert full.rebuild and full.scores == popularity.scores and len(full.scores) == 2


def test_the_synced_marker_survives_a_restart_and_old_snapshots_still_load() -> None:
    popularity = ItemPopularity(HOUR_MS, 100)
    popularity.add([("a", T0, 1.0)])
    popularity.synced = "2026-01-01T00:00:00Z-abc"
    back = ItemPopularity.restore(HOUR_MS, 100, popularity.snapshot())
    assert (back.ref_ms, back.scores, back.synced) == (
        popularity.ref_ms, popularity.scores, popularity.synced,
    )  # fmt: skip
    old = orjson.dumps([popularity.ref_ms, popularity.scores])  # before re-syncs existed
    back = ItemPopularity.restore(HOUR_MS, 100, old)
    assert back.scores == popularity.scores and back.synced is None
