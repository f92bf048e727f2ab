"""The fine-tune's reservoir: a bounded, uniform sample of the offsets before the window."""

from __future__ import annotations

import doctest
import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

import online_models.finetune.reservoir as reservoir
from online_models.finetune.reservoir import sample_runs, weigh
from streamrec.training_examples import TrainingExample


def test_module_examples_run() -> None:
    assert doctest.testmod(reservoir).failed == 0


@given(
    low=st.integers(0, 10_000),
    span=st.integers(0, 50_000),
    count=st.integers(0, 5_000),
    run_length=st.integers(1, 200),
    seed=st.integers(0, 2**32),
)
def test_runs_are_disjoint_sorted_inside_the_range_and_bounded(
    low: int, span: int, count: int, run_length: int, seed: int
) -> None:
    runs = sample_runs(low, low + span, count, run_length, random.Random(seed))
    offsets = [offset for start, end in runs for offset in range(start, end)]
    assert offsets == sorted(set(offsets))  # sorted, no offset twice
    assert all(low <= offset < low + span for offset in offsets)
    assert len(offsets) <= max(count, 0) + run_length  # bounded memory, whatever the topic
    if 0 < span <= count:
        assert offsets == list(range(low, low + span))  # a short topic: all of it


def test_runs_cover_the_old_and_the_recent_past_alike() -> None:
    halves = Counter[str]()
    for seed in range(400):
        for start, _ in sample_runs(0, 100_000, 1000, 100, random.Random(seed)):
            halves["older" if start < 50_000 else "newer"] += 1
    assert abs(halves["older"] - halves["newer"]) < 0.1 * sum(halves.values())


def test_nothing_before_the_window_gives_no_reservoir() -> None:
    assert sample_runs(500, 500, 100, 10, random.Random(0)) == []
    assert sample_runs(0, 1000, 0, 10, random.Random(0)) == []


def test_weigh_scales_the_loss_weight_only() -> None:
    example = TrainingExample("e1", "s", ("a",), "b", ts=5, weight=2.0)
    (weighed,) = weigh([example], 0.25)
    assert weighed.weight == 0.5 and weighed._replace(weight=2.0) == example
