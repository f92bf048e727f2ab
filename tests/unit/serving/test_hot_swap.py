"""Hot swap: newest good version served, bad versions skipped, swaps atomic for readers."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.hot_swap import ModelFollower, ModelHolder, ModelSnapshot
from serving.metrics import ServingMetrics


class FakeScorer:
    """Scores item i as weights[i] + 0.001 * (clicks on i): deterministic and cheap."""

    def __init__(self, version: int, item_ids: Sequence[str], offset: float = 0.0) -> None:
        self.version = version
        self.item_ids = list(item_ids)
        self._rows = {item_id: row for row, item_id in enumerate(self.item_ids)}
        self.weights = np.arange(len(self.item_ids), dtype=np.float32) + offset

    def score(self, history: Sequence[str]) -> np.ndarray:
        scores = self.weights.copy()
        for item_id in history:
            if item_id in self._rows:
                scores[self._rows[item_id]] += 0.001
        return scores

    def score_batch(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        return np.stack([self.score(history) for history in histories])


@dataclass
class FakeWeights:
    version: int
    finite: bool = True

    def all_finite(self) -> bool:
        return self.finite


@dataclass
class FakeRegistry:
    """Versions by number; a version in ``broken`` loads as its predecessor (fallback)."""

    current: int | None = None
    broken: set[int] = field(default_factory=set)
    non_finite: set[int] = field(default_factory=set)
    loads: list[int] = field(default_factory=list)

    def current_version(self) -> int | None:
        return self.current

    def load(self, version: int | None = None, base: object = None) -> FakeWeights:
        target = self.current if version is None else version
        assert target is not None
        self.loads.append(target)
        while target in self.broken:
            target -= 1
        return FakeWeights(target, finite=target not in self.non_finite)


ITEMS = [f"i{n}" for n in range(10)]


def follower_for(registry: FakeRegistry, categories: dict[str, str] | None = None):
    holder = ModelHolder()
    follower = ModelFollower(
        holder,
        registry,
        lambda weights: FakeScorer(weights.version, ITEMS),
        redis_client=None,
        channel="unused",
        poll_interval_s=0.01,
        category_refresh_s=3600,
        read_categories=lambda: categories or {},
        metrics=ServingMetrics(CollectorRegistry()),
    )
    return holder, follower


def test_follower_swaps_in_the_newest_version() -> None:
    registry = FakeRegistry(current=1)
    holder, follower = follower_for(registry)
    follower.check_now("startup")
    assert holder.current is not None and holder.current.version == 1
    registry.current = 3
    follower.check_now()
    assert holder.current.version == 3
    assert holder.current.source == "poll"


def test_an_announced_version_is_loaded_even_before_the_pointer_is_read() -> None:
    registry = FakeRegistry(current=1)
    holder, follower = follower_for(registry)
    follower._announce(b"2")
    follower.check_now("pubsub")
    assert holder.current is not None and holder.current.version == 2


def test_a_version_that_falls_back_is_skipped_and_the_old_one_keeps_serving() -> None:
    registry = FakeRegistry(current=1, broken={2})
    holder, follower = follower_for(registry)
    follower.check_now()
    registry.current = 2
    follower.check_now()
    assert holder.current is not None and holder.current.version == 1
    assert follower.failed_versions() == [2]
    follower.check_now()
    assert registry.loads.count(2) == 1, "a failed version is not retried"
    registry.current = 3
    follower.check_now()
    assert holder.current.version == 3


def test_non_finite_weights_are_refused() -> None:
    registry = FakeRegistry(current=1, non_finite={2})
    holder, follower = follower_for(registry)
    follower.check_now()
    registry.current = 2
    follower.check_now()
    assert holder.current is not None and holder.current.version == 1
    assert follower.failed_versions() == [2]
    assert "non-finite" in follower.state.failed_versions[0][1]


def test_a_scorer_that_cannot_be_built_is_skipped() -> None:
    registry = FakeRegistry(current=1)
    holder, follower = follower_for(registry)
    follower.check_now()

    def refuse(weights: FakeWeights) -> FakeScorer:
        raise ValueError("shape mismatch")

    follower.build_scorer = refuse
    registry.current = 2
    follower.check_now()
    assert holder.current is not None and holder.current.version == 1
    assert follower.failed_versions() == [2]


def test_snapshot_indexes_items_and_categories() -> None:
    snapshot = ModelSnapshot.build(FakeScorer(4, ITEMS), "startup", {"i1": "A", "i3": "A"})
    assert snapshot.version == 4
    assert snapshot.item_rows["i3"] == 3
    assert snapshot.categories.candidates(["A"]).tolist() == [1, 3]
    assert snapshot.categories.candidates(["B"]).size == 0


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
