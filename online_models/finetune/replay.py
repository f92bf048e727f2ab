"""The fine-tune's replay buffer: recent training examples read back from Kafka.

Returns the newest ``count`` examples produced between ``since_ms`` (optional) and
``until_ms`` (default: when the read starts), by Kafka message timestamp. Examples arriving
later belong to the next fine-tune. Partitions are assigned directly, so reading never joins
or disturbs a consumer group.

Where reading starts: the first offset at ``since_ms`` (``offsets_for_times``), else about
``count`` messages before each partition's end; a partition is done at its first message
newer than ``until_ms``, or when nothing more arrives for ``idle_s`` (its end). Watermarks
and time lookups are only hints: a broker that answers them coarsely (the embedded tansu
reports per-batch watermarks) costs a longer read, never a wrong buffer, because the
timestamps of the messages themselves decide what is kept.

Repeats (the flow delivers examples at least once) are dropped by ``example_id``
(``streamrec.example_dedupe``, ``repeat_window`` records per partition), so the buffer
holds each example once.
"""

from __future__ import annotations

import contextlib
import time

from confluent_kafka import Consumer, Message, TopicPartition

from streamrec.example_dedupe import ExampleDedupe
from streamrec.kafka_clients import read_until_done
from streamrec.settings import FlowSettings, KafkaSettings
from streamrec.training_examples import TrainingExample, decode_example, is_next_click


def read_replay(
    kafka: KafkaSettings,
    topic: str,
    count: int,
    since_ms: int | None = None,
    until_ms: int | None = None,
    idle_s: float = 1.0,
    timeout_s: float = 120.0,
    repeat_window: int = FlowSettings.model_fields["repeat_window"].default,
) -> list[TrainingExample]:
    """Up to ``count`` of the newest distinct examples in the time range, oldest first."""
    until_ms = int(time.time() * 1000) if until_ms is None else until_ms
    consumer = Consumer(
        kafka.client_config()
        | {
            "group.id": "streamrec-replay",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
        }
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        starts = _start_offsets(consumer, topic, partitions, count, since_ms)
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in partitions])
        kept: list[tuple[int, int, int, TrainingExample]] = []
        repeats = ExampleDedupe(repeat_window)

        def keep(message: Message) -> bool:
            nonlocal kept
            _, stamp = message.timestamp()
            if stamp > until_ms:
                return False  # this partition is past the range
            if since_ms is not None and stamp < since_ms:
                return True
            # Not an example: the flow's dead-letter path owns bad input, skip it here.
            with contextlib.suppress(ValueError):
                example = decode_example(message.value())
                partition, offset = message.partition(), message.offset()
                if repeats.is_new(partition, offset, example.example_id) and is_next_click(example):
                    kept.append((example.ts, partition, offset, example))
                    if len(kept) > 4 * count:
                        kept = sorted(kept, key=lambda entry: entry[:3])[-count:]
            return True

        read_until_done(consumer, topic, partitions, keep, idle_s, timeout_s)
        kept.sort(key=lambda entry: entry[:3])
        return [entry[3] for entry in kept[-count:]]
    finally:
        consumer.close()


def _start_offsets(
    consumer: Consumer, topic: str, partitions: list[int], count: int, since_ms: int | None
) -> dict[int, int]:
    if since_ms is not None:
        found = consumer.offsets_for_times(
            [TopicPartition(topic, p, since_ms) for p in partitions], timeout=10
        )
        return {tp.partition: max(tp.offset, 0) for tp in found}
    starts: dict[int, int] = {}
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        # A little more than an even share; the newest ``count`` overall are kept.
        starts[p] = max(low, high - int(count * 1.5 / len(partitions)) - 1)
    return starts
