"""Hot swap: the registry's current version served, failures retried, swaps atomic."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from serving.hot_swap import (
    FAILED_VERSIONS_KEPT,
    ModelFollower,
    ModelHolder,
    ModelSnapshot,
    retry_delay_s,
)
from serving.metrics import ServingMetrics


class FakeScorer:
    """Scores item i as weights[i] + 0.001 * (clicks on i): deterministic and cheap."""

    def __init__(self, version: int, item_ids: Sequence[str], offset: float = 0.0) -> None:
        self.version = version
        self.item_ids = list(item_ids)
        self._rows = {item_id: row for row, item_id in enumerate(self.item_ids)}
        self.item_rows = self._rows
        self.weights = np.arange(len(self.item_ids), dtype=np.float32) + offset

    def score(self, history: Sequence[str]) -> np.ndarray:
        scores = self.weights.copy()
        for item_id in history:
            if item_id in self._rows:
                scores[self._rows[item_id]] += 0.001
        return scores

    def top_k_batch(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        excluded: Sequence[np.ndarray | None] = (),
        candidates: Sequence[np.ndarray | None] = (),
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """A full sort of each row: the plain reference of the scorer's top K."""
        answers = []
        for line, history in enumerate(histories):
            scores = self.score(history)
            if excluded and excluded[line] is not None:
                scores[excluded[line]] = -np.inf
            allowed = candidates[line] if candidates else None
            pool = np.arange(len(scores)) if allowed is None else allowed
            best = pool[np.argsort(-scores[pool], kind="stable")][:k]
            best = best[np.isfinite(scores[best])]
            answers.append((best, scores[best]))
        return answers


@dataclass
class FakeWeights:
    version: int
    finite: bool = True
    changes: SimpleNamespace | None = None  # base, rows: as ``RowChanges``
    checked: list[object] = field(default_factory=list)  # the rows of each finite check

    def all_finite(self, rows: object = None) -> bool:
        self.checked.append(rows)
        return self.finite


@dataclass
class FakeRegistry:
    """Versions by number; a version in ``broken`` loads as its predecessor (fallback);
    a version in ``errors`` raises that exception (a blob the registry cannot read)."""

    current: int | None = None
    broken: set[int] = field(default_factory=set)
    non_finite: set[int] = field(default_factory=set)
    errors: dict[int, Exception] = field(default_factory=dict)
    loads: list[int] = field(default_factory=list)
    bases: list[object] = field(default_factory=list)
    checked: list[object] = field(default_factory=list)

    def current_version(self) -> int | None:
        return self.current

    def load(self, version: int | None = None, base: object = None) -> FakeWeights:
        target = self.current if version is None else version
        assert target is not None
        self.loads.append(target)
        self.bases.append(base)
        if target in self.errors:
            raise self.errors[target]
        while target in self.broken:
            target -= 1
        # from a base, the registry names the rows its deltas changed (here: row = version)
        changes = None
        if isinstance(base, FakeWeights):
            changes = SimpleNamespace(base=base.version, rows=[base.version + 1, target])
        return FakeWeights(target, target not in self.non_finite, changes, self.checked)


ITEMS = [f"i{n}" for n in range(10)]
RETRY_BASE_S = 1.0
RETRY_MAX_S = 8.0


class FakeClock:
    """The follower's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def follower_for(
    registry: FakeRegistry, categories: dict[str, str] | None = None, swap_cpu_share: float = 1.0
) -> tuple[ModelHolder, ModelFollower, FakeClock]:
    holder = ModelHolder()
    clock = FakeClock()
    follower = ModelFollower(
        holder,
        registry,
        lambda weights, previous: FakeScorer(weights.version, ITEMS),
        redis_client=None,
        channel="unused",
        poll_interval_s=0.01,
        category_refresh_s=3600,
        read_categories=lambda: categories or {},
        metrics=ServingMetrics(CollectorRegistry()),
        retry_base_s=RETRY_BASE_S,
        retry_max_s=RETRY_MAX_S,
        clock=clock,
        swap_cpu_share=swap_cpu_share,
        cpu_clock=clock,  # a load's time here is all the loader's CPU
    )
    return holder, follower, clock


def load_failures(follower: ModelFollower) -> float:
    value = follower.metrics.registry.get_sample_value(
        "streamrec_serving_model_load_failures_total"
    )
    assert value is not None
    return value


def test_follower_swaps_in_the_newest_version() -> None:
    registry = FakeRegistry(current=1)
    holder, follower, _ = follower_for(registry)
    follower.check_now("startup")
    assert holder.current is not None and holder.current.version == 1
    registry.current = 3
    follower.check_now()
    assert holder.current.version == 3
    assert holder.current.source == "poll"
    assert registry.bases[-1] is not None, "moving forward reuses the serving weights"


def test_the_next_version_is_built_on_the_serving_scorer_checking_only_changed_rows() -> None:
    registry = FakeRegistry(current=1)
    holder, follower, _ = follower_for(registry)
    build, lent = follower.build_scorer, []

    def lending(weights: FakeWeights, previous: object) -> FakeScorer:
        lent.append(previous)
        return build(weights, previous)

    follower.build_scorer = lending
    follower.check_now()
    assert holder.current is not None
    first = holder.current.scorer
    registry.current = 3
    follower.check_now()
    assert lent == [None, first], "the scorer serving lends its tables to the next one"
    assert registry.checked == [None, [2, 3]], "rows the deltas left alone were checked"
    registry.current = 1  # a rollback loads from scratch: every row is checked
    follower.check_now()
    assert registry.checked[-1] is None and holder.current.version == 1


def test_newer_versions_wait_their_turn_so_loads_keep_to_their_share_of_the_worker() -> None:
    registry = FakeRegistry(current=1)
    holder, follower, clock = follower_for(registry, swap_cpu_share=0.25)
    build = follower.build_scorer

    def two_seconds(weights: FakeWeights, previous: object) -> FakeScorer:
        clock.now += 2.0  # each load takes 2 s of the worker
        return build(weights, previous)

    follower.build_scorer = two_seconds
    follower.check_now("startup")  # no request waited for this one: nothing is held back
    registry.current = 2
    follower.check_now()
    assert holder.current is not None and holder.current.version == 2
    registry.current = 3
    follower.check_now()  # 2 s taken from requests: the next one waits 2 x (1 / 0.25 - 1)
    assert holder.current.version == 2
    clock.now += 5.9
    follower.check_now("pubsub")
    assert holder.current.version == 2 and registry.loads == [1, 2]
    clock.now += 0.2
    follower.check_now()
    assert holder.current.version == 3
    registry.current = 1  # a rollback is loaded at once
    follower.check_now()
    assert holder.current.version == 1


def test_a_registry_reset_is_followed_down_and_loaded_from_scratch() -> None:
    registry = FakeRegistry(current=7)
    holder, follower, _ = follower_for(registry)
    follower.check_now()
    assert holder.current is not None and holder.current.version == 7
    registry.current = 1  # Redis was reset: the numbering started again
    follower.check_now()
    assert holder.current.version == 1
    assert registry.bases[-1] is None, "old weights are no base for another lineage"
    assert follower.failed_versions() == []


def test_only_the_registry_pointer_is_followed_never_an_announced_number() -> None:
    registry = FakeRegistry(current=1)
    holder, follower, _ = follower_for(registry)
    follower.check_now("startup")
    for _ in range(3):  # woken by announcements (say a bogus 99999): the pointer is read
        follower.check_now("pubsub")
    assert registry.loads == [1]
    registry.current = 2
    follower.check_now("pubsub")
    assert holder.current is not None and holder.current.version == 2
    assert holder.current.source == "pubsub"


def test_a_version_that_falls_back_is_failed_and_retried_after_a_backoff() -> None:
    registry = FakeRegistry(current=1, broken={2})
    holder, follower, clock = follower_for(registry)
    follower.check_now()
    registry.current = 2
    follower.check_now()
    assert holder.current is not None and holder.current.version == 1
    assert follower.failed_versions() == [2]
    follower.check_now()
    assert registry.loads.count(2) == 1, "not retried before its backoff"
    clock.now += RETRY_BASE_S  # the first retry waits at most the base
    follower.check_now()
    assert registry.loads.count(2) == 2
    assert follower.state.failures[2].attempts == 2
    registry.broken.clear()  # the blob was repaired
    clock.now += RETRY_MAX_S
    follower.check_now()
    assert holder.current.version == 2
    assert follower.failed_versions() == [], "a version that loads is no longer listed"


def test_at_startup_the_registry_fallback_is_served_while_the_current_is_retried() -> None:
    registry = FakeRegistry(current=3, broken={3})
    holder, follower, _ = follower_for(registry)
    follower.check_now("startup")
    assert holder.current is not None and holder.current.version == 2
    assert follower.failed_versions() == [3]


def test_a_fallback_older_than_the_serving_version_is_not_swapped_in() -> None:
    registry = FakeRegistry(current=5)
    holder, follower, _ = follower_for(registry)
    follower.check_now()
    registry.current, registry.broken = 7, {7, 6}  # 7 falls back to 5: already serving
    follower.check_now()
    assert holder.current is not None and holder.current.version == 5
    assert follower.failed_versions() == [7]


def test_non_finite_weights_are_refused() -> None:
    registry = FakeRegistry(current=1, non_finite={2})
    holder, follower, _ = follower_for(registry)
    follower.check_now()
    registry.current = 2
    follower.check_now()
    assert holder.current is not None and holder.current.version == 1
    assert follower.failed_versions() == [2]
    assert "non-finite" in follower.state.failures[2].reason


@pytest.mark.parametrize(
    "error", [RuntimeError("size mismatch"), KeyError("head.item_bias"), ValueError("shape")]
)
def test_any_error_building_the_scorer_fails_the_version(error: Exception) -> None:
    registry = FakeRegistry(current=1)
    holder, follower, _ = follower_for(registry)
    follower.check_now()

    def refuse(weights: FakeWeights, previous: object) -> FakeScorer:
        raise error

    follower.build_scorer = refuse
    registry.current = 2
    follower.check_now()
    assert holder.current is not None and holder.current.version == 1
    assert follower.failed_versions() == [2]
    assert follower.state.failures[2].reason.startswith(type(error).__name__)
    assert load_failures(follower) == 1


@pytest.mark.parametrize("error", [RuntimeError("safetensors"), KeyError("weight")])
def test_a_failing_version_is_retried_with_bounded_backoff(error: Exception) -> None:
    registry = FakeRegistry(current=1)
    holder, follower, clock = follower_for(registry)
    follower.check_now()
    registry.current, registry.errors = 2, {2: error}
    attempts_at: list[float] = []
    window_s, tick_s = 120.0, 0.05
    start = clock.now
    while clock.now - start < window_s:
        before = len(registry.loads)
        follower.check_now()
        if len(registry.loads) > before:
            attempts_at.append(clock.now)
        clock.now += tick_s
    gaps = [b - a for a, b in zip(attempts_at, attempts_at[1:], strict=False)]
    # Waits double from the base (half of each is jitter) and stop growing at the max.
    assert all(RETRY_BASE_S / 2 - tick_s <= gap <= RETRY_MAX_S + tick_s for gap in gaps)
    assert all(later >= earlier - tick_s for earlier, later in pairwise(gaps[:4]))
    assert 15 <= len(attempts_at) <= 35, "bounded: about window / (max / 2 .. max)"
    assert holder.current is not None and holder.current.version == 1, "the old one serves"
    failure = follower.state.failures[2]
    assert failure.attempts == len(attempts_at) == load_failures(follower)
    assert failure.reason.startswith(type(error).__name__)
    last_check = clock.now - tick_s
    assert last_check < failure.retry_at <= last_check + RETRY_MAX_S, "due after the last check"


@given(
    attempts=st.integers(1, 200),
    base_s=st.floats(0.01, 10),
    max_s=st.floats(0.01, 600),
    seed=st.integers(0, 2**32),
)
def test_retry_delay_doubles_up_to_the_max_with_half_of_it_jittered(
    attempts: int, base_s: float, max_s: float, seed: int
) -> None:
    ceiling = min(max_s, base_s * 2 ** (attempts - 1))
    delay = retry_delay_s(attempts, base_s, max_s, random.Random(seed))
    assert ceiling / 2 <= delay <= ceiling <= max_s


def test_the_failed_versions_kept_are_bounded() -> None:
    registry = FakeRegistry(current=1)
    holder, follower, _ = follower_for(registry)
    follower.check_now()
    for version in range(2, 2 + FAILED_VERSIONS_KEPT + 5):
        registry.current = version
        registry.errors[version] = RuntimeError("bad blob")
        follower.check_now()
    assert len(follower.failed_versions()) == FAILED_VERSIONS_KEPT
    assert follower.failed_versions()[-1] == registry.current


def test_snapshot_indexes_items_and_categories() -> None:
    snapshot = ModelSnapshot.build(FakeScorer(4, ITEMS), "startup", {"i1": "A", "i3": "A"})
    assert snapshot.version == 4
    assert snapshot.item_rows["i3"] == 3
    assert snapshot.categories.candidates(["A"]).tolist() == [1, 3]
    assert snapshot.categories.candidates(["B"]).size == 0


@pytest.mark.parametrize(
    ("next_ids", "next_categories"),
    [
        ([*ITEMS, "n1", "n2"], None),  # an online version adds items: extended
        (list(ITEMS), None),  # the same items: reused
        ([*reversed(ITEMS), "n1"], None),  # a retrained model's new rows: rebuilt
        ([*ITEMS, "n1"], {"i0": "C", "n1": "B"}),  # categories re-read: rebuilt
    ],
)
def test_a_snapshot_built_on_the_one_before_indexes_categories_as_a_fresh_one(
    next_ids: list[str], next_categories: dict[str, str] | None
) -> None:
    categories = {"i1": "A", "i3": "A", "i4": "B", "n1": "A", "n2": "C"}
    before = ModelSnapshot.build(FakeScorer(4, ITEMS), "poll", categories)
    scorer = FakeScorer(5, next_ids)
    now = next_categories or categories
    built_on = ModelSnapshot.build(scorer, "poll", now, before).categories
    fresh = ModelSnapshot.build(scorer, "poll", now).categories
    assert built_on.rows.keys() == fresh.rows.keys()
    for name, rows in fresh.rows.items():
        assert built_on.rows[name].tolist() == rows.tolist()
        assert built_on.candidates([name]).tolist() == [
            r for r, i in enumerate(next_ids) if now.get(i) == name
        ]


@pytest.mark.timeout(30)
def test_readers_never_see_a_mixed_snapshot_while_versions_swap() -> None:
    holder = ModelHolder()
    holder.swap(ModelSnapshot.build(FakeScorer(1, ITEMS, offset=1.0), "startup"))
    stop = threading.Event()
    mismatches: list[int] = []

    def read() -> None:
        while not stop.is_set():
            snapshot = holder.current
            assert snapshot is not None
            # The scorer's weights encode its version: offset == version.
            if snapshot.scorer.weights[0] != snapshot.version or (
                snapshot.scorer.version != snapshot.version
            ):
                mismatches.append(snapshot.version)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    for version in range(2, 300):
        holder.swap(ModelSnapshot.build(FakeScorer(version, ITEMS, offset=version), "poll"))
    stop.set()
    for reader in readers:
        reader.join()
    assert mismatches == []
    assert holder.current.version == 299
