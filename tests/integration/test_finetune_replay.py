"""The fine-tune's replay buffer read back from the real broker by count and time range,
and its reservoir sampled from the offsets before the window."""

from __future__ import annotations

import time

import pytest

from online_models.finetune.replay import read_replay
from online_models.finetune.reservoir import read_reservoir
from streamrec.kafka_clients import make_producer
from streamrec.settings import Settings
from streamrec.topics import Topics
from streamrec.training_examples import TrainingExample, encode_example

pytestmark = pytest.mark.integration


def produce(settings: Settings, start: int, count: int) -> None:
    producer = make_producer(settings.kafka)
    topic = Topics.from_settings(settings.kafka).training_examples
    for i in range(start, start + count):
        example = TrainingExample(f"e{i}", f"s{i % 7}", ("a",), "b", ts=1_000_000 + i)
        producer.produce(topic, encode_example(example), key=example.session_id.encode())
    producer.produce(topic, b"not an example", key=b"x")
    assert producer.flush(10) == 0


def test_replay_by_count_and_time_range(settings: Settings) -> None:
    topic = Topics.from_settings(settings.kafka).training_examples
    produce(settings, 0, 300)
    time.sleep(0.05)  # message timestamps are milliseconds: make the boundary unambiguous
    middle_ms = int(time.time() * 1000)
    time.sleep(0.05)
    produce(settings, 300, 200)

    newest = read_replay(settings.kafka, topic, 50, idle_s=0.5)
    assert [e.example_id for e in newest] == [f"e{i}" for i in range(450, 500)]

    since = read_replay(settings.kafka, topic, 1000, since_ms=middle_ms, idle_s=0.5)
    assert [e.example_id for e in since] == [f"e{i}" for i in range(300, 500)]

    until = read_replay(settings.kafka, topic, 1000, until_ms=middle_ms, idle_s=0.5)
    assert [e.example_id for e in until] == [f"e{i}" for i in range(300)]


def test_reservoir_samples_only_what_came_before_the_window(settings: Settings) -> None:
    topic = Topics.from_settings(settings.kafka).training_examples
    produce(settings, 0, 300)
    time.sleep(0.05)
    window_ms = int(time.time() * 1000)
    time.sleep(0.05)
    produce(settings, 300, 200)

    sampled = read_reservoir(settings.kafka, topic, 100, before_ms=window_ms, seed=1, idle_s=0.5)
    ids = [int(e.example_id[1:]) for e in sampled]
    assert 50 <= len(ids) <= 200 and len(set(ids)) == len(ids)
    assert max(ids) < 300  # nothing of the window
    assert ids == sorted(ids)  # oldest first

    everything = read_reservoir(settings.kafka, topic, 1000, window_ms, seed=1, idle_s=0.5)
    assert [e.example_id for e in everything] == [f"e{i}" for i in range(300)]
    assert read_reservoir(settings.kafka, topic, 0, before_ms=window_ms, seed=1) == []
