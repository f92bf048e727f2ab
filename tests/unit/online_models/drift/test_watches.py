"""The two watches after an automatic response: a drop that heals, a promotion that holds."""

from __future__ import annotations

import doctest

from online_models.drift import promotion_watch, recovery_watch
from online_models.drift.promotion_watch import PromotionWatch
from online_models.drift.recovery_watch import RecoveryWatch


def test_the_docstring_examples_hold() -> None:
    assert doctest.testmod(recovery_watch).failed == 0
    assert doctest.testmod(promotion_watch).failed == 0


def test_a_drop_is_judged_only_on_what_follows_it() -> None:
    watch = RecoveryWatch(window=10, tolerance=0.1, page_after_ms=0)
    for _ in range(10):
        assert watch.observe(1.0, ts_ms=0) is None  # nothing watched yet
    watch.dropped(level_before=0.5, ts_ms=0)
    results = [watch.observe(0.0, ts_ms=1) for _ in range(10)]
    assert results[:9] == [None] * 9 and results[9] is not None  # the old 1.0s do not count


def test_a_promotion_that_holds_ends_the_watch_without_a_verdict() -> None:
    watch = PromotionWatch(window=10, margin=0.05)
    watch.start(version=3, level_before=0.5)
    assert [watch.observe(0.5 if i % 2 else 0.45, version=4) for i in range(10)] == [None] * 10
    assert not watch.watching
    assert watch.observe(0.0, version=5) is None
