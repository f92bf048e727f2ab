"""Exploration slots: seeded Thompson draws over new items, bounded, never a repeat."""

from __future__ import annotations

from collections import Counter

import numpy as np

from serving.exploration import NewItemPool, NewItems, exploration_rng, explore, new_items
from serving.hot_swap import ModelHolder, ModelSnapshot
from serving.recommender import Recommendation
from streamrec.redis_keys import RedisKeys
from tests.unit.serving.test_hot_swap import ITEMS, FakeScorer

LISTED = Recommendation(("i9", "i8", "i7", "i6"), (9.0, 8.0, 7.0, 6.0), 5, arm="online")
POOL = new_items(ITEMS, shown={"i0": 3, "i1": 50, "i2": 1}, clicked={"i2": 1}, max_shown=10)


def explored(
    recommendation: Recommendation = LISTED,
    pool: NewItems = POOL,
    slots: int = 2,
    k: int = 4,
    sample: int = 64,
    excluded: frozenset[str] = frozenset(),
    seed: int = 7,
) -> Recommendation:
    return explore(
        recommendation, pool, slots=slots, k=k, sample=sample, excluded=excluded,
        allowed=None, rng=np.random.default_rng(seed),
    )  # fmt: skip


def test_new_items_are_the_known_ones_shown_less_than_the_bound() -> None:
    assert "i1" not in POOL.item_ids  # shown 50 >= 10
    assert set(POOL.item_ids) == set(ITEMS) - {"i1"}
    at = POOL.item_ids.index("i2")
    assert (POOL.clicks[at], POOL.shown[at]) == (1.0, 1.0)
    at = POOL.item_ids.index("i5")  # never shown: counts 0
    assert (POOL.clicks[at], POOL.shown[at]) == (0.0, 0.0)


def test_the_same_seed_explores_the_same_way() -> None:
    assert explored(seed=3) == explored(seed=3)
    picks = {explored(seed=seed).item_ids[2:] for seed in range(20)}
    assert len(picks) > 1  # and the seed matters


def test_slots_take_the_last_places_are_marked_and_keep_the_length() -> None:
    answer = explored()
    assert len(answer.item_ids) == 4 and answer.explored == (2, 3)
    assert answer.item_ids[:2] == ("i9", "i8")
    assert answer.scores == (9.0, 8.0, 8.0, 8.0)  # the last kept score: still sorted
    assert (answer.arm, answer.model_version) == ("online", 5)


def test_a_short_list_gets_the_slots_appended() -> None:
    short = Recommendation(("i9",), (9.0,), 5)
    answer = explored(short, slots=2, k=4)
    assert answer.item_ids[0] == "i9" and len(answer.item_ids) == 3
    assert answer.explored == (1, 2)


def test_never_an_item_already_listed_or_excluded_or_twice() -> None:
    excluded = frozenset({"i0", "i2", "i3"})
    for seed in range(50):
        answer = explored(slots=3, excluded=excluded, seed=seed)
        new = [answer.item_ids[p] for p in answer.explored]
        assert len(set(answer.item_ids)) == len(answer.item_ids)
        assert not set(new) & (excluded | {"i9", "i8", "i7", "i6"})
        assert set(new) <= {"i4", "i5"}


def test_a_refused_category_is_never_explored() -> None:
    for seed in range(20):
        answer = explore(
            LISTED, POOL, slots=2, k=4, sample=64, excluded=frozenset(),
            allowed=lambda item: item in {"i0", "i3"}, rng=np.random.default_rng(seed),
        )  # fmt: skip
        assert {answer.item_ids[p] for p in answer.explored} <= {"i0", "i3"}


def test_each_worker_draws_its_own_reproducible_sequence() -> None:
    def draws(seed: int, worker_index: int) -> list[float]:
        return exploration_rng(seed, worker_index).random(8).tolist()

    assert draws(3, 1) == draws(3, 1)  # a restarted worker replays its sequence
    per_worker = [draws(3, index) for index in range(4)]
    assert all(a != b for n, a in enumerate(per_worker) for b in per_worker[n + 1 :])
    assert draws(4, 0) != draws(3, 0)


def test_bounded_by_the_slots_and_the_sample() -> None:
    assert len(explored(slots=1).explored) == 1
    # One candidate drawn per request: at most one item, whatever the slots.
    assert all(len(explored(slots=3, sample=1, seed=s).explored) <= 1 for s in range(30))
    empty = new_items(ITEMS, {item: 100 for item in ITEMS}, {}, max_shown=10)
    assert explored(pool=empty) == LISTED
    assert explored(slots=0) == LISTED


def test_thompson_sampling_prefers_the_unknown_to_the_ignored() -> None:
    pool = new_items(["fresh", "ignored"], shown={"ignored": 90}, clicked={}, max_shown=100)
    empty = Recommendation((), (), None, fallback="popular")
    wins = Counter(
        explored(empty, pool=pool, slots=1, k=1, seed=seed).item_ids[0] for seed in range(200)
    )
    assert wins["fresh"] > 190


class FakePipeline:
    def __init__(self, hashes: dict[str, dict[bytes, bytes]]) -> None:
        self.hashes = hashes
        self.reads: list[str] = []

    def hgetall(self, key: str) -> None:
        self.reads.append(key)

    def execute(self) -> list[dict[bytes, bytes]]:
        return [self.hashes.get(key, {}) for key in self.reads]


class FakeRedis:
    def __init__(self, hashes: dict[str, dict[bytes, bytes]]) -> None:
        self.hashes = hashes

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self.hashes)


def test_the_pool_is_rebuilt_from_the_exposure_hashes_for_the_serving_model() -> None:
    keys = RedisKeys("unit")
    client = FakeRedis(
        {keys.item_shown: {b"i0": b"12", b"i1": b"2"}, keys.item_clicked: {b"i1": b"1"}}
    )
    holder = ModelHolder()
    pool = NewItemPool(client, keys, holder, max_shown=10, refresh_s=60)  # type: ignore[arg-type]
    pool.refresh()
    assert pool.current.item_ids == ()  # no model yet: nothing known to explore
    holder.swap(ModelSnapshot.build(FakeScorer(1, ITEMS), "startup"))
    pool.refresh()
    assert "i0" not in pool.current.item_ids and "i1" in pool.current.item_ids
    at = pool.current.item_ids.index("i1")
    assert (pool.current.clicks[at], pool.current.shown[at]) == (1.0, 2.0)
