"""Repeated training examples: the window's decisions, its memory bound, its rebuild (pure)."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

import streamrec.example_dedupe
from streamrec.example_dedupe import ExampleDedupe

# A partition's records as example ids; small alphabets make repeats frequent.
records = st.lists(st.sampled_from("abcdefgh"), max_size=80)
windows = st.integers(1, 12)


def reference_is_new(ids: list[str], offset: int, window: int) -> bool:
    """The contract, from the records alone: no record at most ``window`` offsets before
    ``offset`` carries the same id."""
    return ids[offset] not in ids[max(0, offset - window) : offset]


def test_the_docstring_examples_hold() -> None:
    assert doctest.testmod(streamrec.example_dedupe).failed == 0


@given(partitions=st.lists(records, min_size=1, max_size=3), window=windows)
def test_a_record_is_new_unless_a_record_within_the_window_before_it_has_its_id(
    partitions: list[list[str]], window: int
) -> None:
    dedupe = ExampleDedupe(window)
    longest = max(len(ids) for ids in partitions)
    for offset in range(longest):  # partitions interleaved, each in offset order
        for partition, ids in enumerate(partitions):
            if offset < len(ids):
                decision = dedupe.is_new(partition, offset, ids[offset])
                assert decision == reference_is_new(ids, offset, window), (partition, offset)


@given(ids=records, window=windows)
def test_memory_holds_at_most_the_window_plus_one_id_per_partition(
    ids: list[str], window: int
) -> None:
    dedupe = ExampleDedupe(window)
    for offset, example_id in enumerate(ids):
        dedupe.is_new(0, offset, example_id)
        dedupe.is_new(1, offset, f"{example_id}{offset}")  # all distinct: the worst case
        assert len(dedupe) <= 2 * (window + 1)


@given(ids=records, window=windows, data=st.data())
def test_a_window_rebuilt_from_the_records_before_a_position_decides_as_if_never_stopped(
    ids: list[str], window: int, data: st.DataObject
) -> None:
    position = data.draw(st.integers(0, len(ids)))
    uninterrupted = ExampleDedupe(window)
    for offset in range(position):
        uninterrupted.is_new(0, offset, ids[offset])
    rebuilt = ExampleDedupe(window)
    start, end = rebuilt.rebuild_range(position)
    assert end == position and start == max(0, position - window)
    for offset in range(start, end):
        rebuilt.is_new(0, offset, ids[offset])
    for offset in range(position, len(ids)):
        assert rebuilt.is_new(0, offset, ids[offset]) == uninterrupted.is_new(
            0, offset, ids[offset]
        )


@given(ids=st.lists(st.sampled_from("abc"), min_size=1, max_size=30), window=windows)
def test_a_record_read_again_is_never_counted_twice(ids: list[str], window: int) -> None:
    dedupe = ExampleDedupe(window)
    for offset, example_id in enumerate(ids):
        dedupe.is_new(0, offset, example_id)
    for offset, example_id in enumerate(ids):  # a consumer group that rebalanced
        assert not dedupe.is_new(0, offset, example_id)


def test_partitions_are_independent() -> None:
    dedupe = ExampleDedupe(window=10)
    assert dedupe.is_new(0, 0, "x")
    assert dedupe.is_new(1, 0, "x")  # a repeat lands in its first copy's partition
    assert not dedupe.is_new(0, 5, "x")


def test_a_window_holds_at_least_one_record() -> None:
    with pytest.raises(ValueError):
        ExampleDedupe(0)


def test_a_forgotten_partition_counts_from_offset_zero_again() -> None:
    dedupe = ExampleDedupe(window=100)
    assert [dedupe.is_new(0, offset, f"e{offset}") for offset in range(5)] == [True] * 5
    assert dedupe.newest(0) == 4
    assert not dedupe.is_new(0, 0, "new-after-reset")  # taken for a re-read
    dedupe.forget(0)
    assert dedupe.newest(0) is None
    assert dedupe.is_new(0, 0, "new-after-reset")
    assert dedupe.newest(1) is None
