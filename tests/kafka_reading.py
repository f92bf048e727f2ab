"""Test helpers that read topics back with a deadline (never a bare sleep)."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Message, TopicPartition

from streamrec.settings import KafkaSettings


def read_topic(
    kafka: KafkaSettings, topic: str, expected: int, timeout_s: float = 30.0
) -> list[Message]:
    """Read ``topic`` from the start of every partition until ``expected`` messages arrived.

    Returns what arrived by the deadline (the caller asserts on the count).
    """
    consumer = Consumer(
        kafka.client_config()
        | {
            "group.id": "test-reader",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            for message in consumer.consume(10000, 0.2):
                if message.error() is None:
                    messages.append(message)
    finally:
        consumer.close()
    return messages
