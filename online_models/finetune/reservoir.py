"""Older examples beside a fine-tune's replay: a uniform sample of the topic before it.

A fine-tune trains on the recent window (the change) plus a reservoir of older examples,
so that what still holds from before the change (items and sessions the drift left alone)
is not forgotten while the backbone moves. The reservoir is drawn afresh for every
fine-tune from the ``training-examples`` topic itself: offsets older than the window,
sampled uniformly, read back in short runs of consecutive offsets (one seek per run, not
per example). Nothing is kept between fine-tunes, so a restarted monitor or job draws the
same kind of sample, memory is bounded by ``count`` examples, and how far back it reaches
is the topic's retention. ``streamrec bench drift`` draws its reservoir with the same
``sample_runs`` over its in-memory stream.

Reservoir examples weigh ``weight`` times a recent one in the loss (``weigh``): the recent
window says what changed, the reservoir only keeps the rest in place.

>>> import random
>>> sample_runs(0, 10_000, count=300, run_length=100, rng=random.Random(1))
[(1700, 1800), (7200, 7300), (9700, 9800)]
>>> sample_runs(0, 250, count=300, run_length=100, rng=random.Random(1))
[(0, 250)]
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Sequence

from confluent_kafka import Consumer, Message, TopicPartition

from streamrec.kafka_clients import read_until_done
from streamrec.settings import KafkaSettings
from streamrec.training_examples import TrainingExample, decode_example, is_next_click

RUN_LENGTH = 100  # consecutive offsets per seek: ~2 sessions' worth of 50 interleaved ones


def sample_runs(
    low: int, high: int, count: int, run_length: int, rng: random.Random
) -> list[tuple[int, int]]:
    """About ``count`` offsets of ``[low, high)`` as sorted, disjoint ``[start, end)`` runs
    of ``run_length``, each run equally likely to be anywhere in the range."""
    span = high - low
    if span <= 0 or count <= 0:
        return []
    if span <= count:
        return [(low, high)]
    run_length = min(run_length, count)
    slots = span // run_length
    wanted = min(slots, math.ceil(count / run_length))
    chosen = sorted(rng.sample(range(slots), wanted))
    return [(low + s * run_length, low + (s + 1) * run_length) for s in chosen]


def weigh(examples: Sequence[TrainingExample], weight: float) -> list[TrainingExample]:
    """``examples`` with their loss weight scaled by ``weight``."""
    return [example._replace(weight=example.weight * weight) for example in examples]


def read_reservoir(
    kafka: KafkaSettings,
    topic: str,
    count: int,
    before_ms: int,
    seed: int,
    idle_s: float = 1.0,
    timeout_s: float = 120.0,
) -> list[TrainingExample]:
    """About ``count`` next-click examples sampled uniformly from the messages of ``topic``
    older than ``before_ms`` (message timestamp), each partition in proportion to its
    share of them; oldest first."""
    if count <= 0:
        return []
    consumer = Consumer(
        kafka.client_config()
        | {
            "group.id": "streamrec-reservoir",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
        }
    )
    try:
        ranges = _older_ranges(consumer, topic, before_ms)
        total = sum(high - low for low, high in ranges.values())
        rng = random.Random(seed)
        kept: dict[str, TrainingExample] = {}
        for partition, (low, high) in sorted(ranges.items()):
            share = math.ceil(count * (high - low) / total) if total else 0
            for run in sample_runs(low, high, share, RUN_LENGTH, rng):
                _read_run(consumer, topic, partition, run, before_ms, kept, idle_s, timeout_s)
        return sorted(kept.values(), key=lambda example: example.ts)
    finally:
        consumer.close()


def _older_ranges(consumer: Consumer, topic: str, before_ms: int) -> dict[int, tuple[int, int]]:
    """Per partition, the offsets ``[low, first at before_ms)`` still on the broker."""
    partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    found = consumer.offsets_for_times(
        [TopicPartition(topic, p, before_ms) for p in partitions], timeout=10
    )
    ranges: dict[int, tuple[int, int]] = {}
    for tp in found:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
        end = high if tp.offset < 0 else tp.offset  # -1: nothing that new, all is older
        ranges[tp.partition] = (low, max(low, end))
    return ranges


def _read_run(
    consumer: Consumer,
    topic: str,
    partition: int,
    run: tuple[int, int],
    before_ms: int,
    kept: dict[str, TrainingExample],
    idle_s: float,
    timeout_s: float,
) -> None:
    """Keep the examples of offsets ``run`` = ``[start, end)`` (repeats once, by id)."""
    start, end = run
    consumer.assign([TopicPartition(topic, partition, start)])

    def keep(message: Message) -> bool:
        if message.offset() >= end or message.timestamp()[1] >= before_ms:
            return False
        # Not an example: the flow's dead-letter path owns bad input, skip it here.
        with contextlib.suppress(ValueError):
            example = decode_example(message.value())
            if is_next_click(example):
                kept.setdefault(example.example_id, example)
        return message.offset() < end - 1

    read_until_done(consumer, topic, [partition], keep, idle_s, timeout_s)
    consumer.unassign()
