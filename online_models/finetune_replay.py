"""The fine-tune's replay buffer: recent training examples read back from Kafka.

Reads the ``training-examples`` topic by offset (the last ``count`` examples before the
end offsets seen when the fine-tune started, spread over partitions in proportion) or by
event time (``since_ms``: from the first offset at or after that time). Partitions are
assigned directly, so reading never joins or disturbs a consumer group. The end offsets
are fixed at the start: examples arriving meanwhile belong to the next fine-tune.
"""

from __future__ import annotations

import contextlib
import time

from confluent_kafka import Consumer, TopicPartition

from streamrec.settings import KafkaSettings
from streamrec.training_examples import TrainingExample, decode_example


def end_offsets(kafka: KafkaSettings, topic: str) -> dict[int, int]:
    """Partition -> high watermark of ``topic`` now (where a replay taken now would stop)."""
    consumer = Consumer(kafka.client_config() | {"group.id": "streamrec-replay"})
    try:
        return _watermarks(consumer, topic)
    finally:
        consumer.close()


def read_replay(
    kafka: KafkaSettings,
    topic: str,
    count: int,
    since_ms: int | None = None,
    ends: dict[int, int] | None = None,
    timeout_s: float = 60.0,
) -> list[TrainingExample]:
    """Up to ``count`` of the most recent examples before ``ends`` (default: now)."""
    consumer = Consumer(
        kafka.client_config()
        | {
            "group.id": "streamrec-replay",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
        }
    )
    try:
        stops = ends if ends is not None else _watermarks(consumer, topic)
        starts = _start_offsets(consumer, topic, stops, count, since_ms)
        assignment = [TopicPartition(topic, p, starts[p]) for p in stops if starts[p] < stops[p]]
        if not assignment:
            return []
        consumer.assign(assignment)
        remaining = {tp.partition for tp in assignment}
        examples: list[TrainingExample] = []
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for message in consumer.consume(5000, 0.2):
                if message.error() is not None:
                    continue
                partition, offset = message.partition(), message.offset()
                if offset >= stops[partition]:
                    remaining.discard(partition)
                    continue
                # Not an example: the flow's dead-letter path owns bad input, skip it here.
                with contextlib.suppress(ValueError):
                    examples.append(decode_example(message.value()))
                if offset + 1 >= stops[partition]:
                    remaining.discard(partition)
        if remaining:
            raise TimeoutError(f"replay of {topic} incomplete after {timeout_s}s: {remaining}")
        examples.sort(key=lambda e: (e.ts, e.source_partition, e.source_offset))
        return examples[-count:]
    finally:
        consumer.close()


def _watermarks(consumer: Consumer, topic: str) -> dict[int, int]:
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in partitions
    }


def _start_offsets(
    consumer: Consumer, topic: str, stops: dict[int, int], count: int, since_ms: int | None
) -> dict[int, int]:
    lows = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in stops
    }
    if since_ms is not None:
        found = consumer.offsets_for_times(
            [TopicPartition(topic, p, since_ms) for p in stops], timeout=10
        )
        return {tp.partition: tp.offset if tp.offset >= 0 else stops[tp.partition] for tp in found}
    available = sum(stops[p] - lows[p] for p in stops)
    starts: dict[int, int] = {}
    for p, stop in stops.items():
        share = (stop - lows[p]) / available if available else 0.0
        # Read a little more than the proportional share; the newest ``count`` are kept.
        starts[p] = max(lows[p], stop - int(count * share * 1.2) - 1)
    return starts
