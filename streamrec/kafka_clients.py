"""Kafka clients built from settings: idempotent producers, consumers and topic creation.

Everything takes its bootstrap address and security options from ``KafkaSettings``,
so the embedded broker and a real Apache Kafka cluster are used the same way.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamrec.settings import KafkaSettings


def make_producer(settings: KafkaSettings, **overrides: Any) -> Producer:
    """An idempotent producer (no duplicates or reordering on retries), tuned for throughput."""
    config = settings.client_config() | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500000,
    }
    config.update(overrides)
    return Producer(config)


def make_consumer(settings: KafkaSettings, group_id: str, **overrides: Any) -> Consumer:
    """A consumer with manual commits and a short fetch wait, for low latency.

    The session and heartbeat timeouts are short so a group joins in seconds.
    """
    config = settings.client_config() | {
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": settings.fetch_wait_max_ms,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    }
    config.update(overrides)
    return Consumer(config)


def broker_answers(settings: KafkaSettings, timeout_s: float = 2.0) -> bool:
    """Whether the configured bootstrap servers answer a metadata request.

    A quick TCP check comes first, so probing an address where nothing listens does not
    make librdkafka log a connection error every few milliseconds.
    """
    if not any(_port_open(server) for server in settings.bootstrap_servers.split(",")):
        return False
    admin = AdminClient(settings.client_config())
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True


def _port_open(server: str) -> bool:
    host, _, port = server.strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


def ensure_topics(
    settings: KafkaSettings, names: tuple[str, ...] | list[str], timeout_s: float = 10.0
) -> list[str]:
    """Create the missing topics with the configured partitions; return those created.

    Idempotent: existing topics are left alone. Waits until every topic is visible in
    the metadata so a producer started right after never sees "unknown topic".
    """
    admin = AdminClient(settings.client_config())
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [name for name in names if name not in existing]
    created: list[str] = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(name, settings.partitions, settings.replication_factor) for name in missing]
        )
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                created.append(name)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=timeout_s).topics
        if all(name in topics and topics[name].partitions for name in names):
            return created
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not visible after {timeout_s}s: {names}")
        time.sleep(0.05)


def topic_size(settings: KafkaSettings, topic: str) -> int:
    """Messages ever written to ``topic``: the sum of its partitions' high watermarks."""
    consumer = Consumer(settings.client_config() | {"group.id": "streamrec-topic-size"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def emptied_end(consumer: Consumer, topic: str, partition: int, offset: int) -> int | None:
    """The partition's end when it lies before ``offset``, else None.

    That happens when the topic was emptied under its reader (a memory-only broker
    restarted, a topic deleted and made again): every record produced since, up to
    ``offset``, would be skipped. The end is the high watermark of the consumer's last
    fetch (``cached``): tansu's ListOffsets answer undercounts by up to its last batch,
    its fetch answer does not. Call it after a poll that returned nothing.
    """
    if offset <= 0:
        return None
    _, end = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
    return end if 0 <= end < offset else None


def read_until_done(
    consumer: Consumer,
    topic: str,
    partitions: Iterable[int],
    handle: Callable[[Message], bool],
    idle_s: float,
    timeout_s: float,
) -> set[int]:
    """Feed ``handle`` the messages of ``partitions`` (already assigned) until each is done.

    A partition is done when ``handle`` returns False for one of its messages (it is paused
    then); reading stops early when nothing arrives for ``idle_s`` (a partition that holds
    fewer records than asked for). Error messages are skipped. Raises ``TimeoutError`` past
    ``timeout_s``. Returns the partitions that were not done.
    """
    open_partitions = set(partitions)
    deadline = time.monotonic() + timeout_s
    last_message = time.monotonic()
    while open_partitions and time.monotonic() - last_message < idle_s:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {topic} took more than {timeout_s}s")
        for message in consumer.consume(5000, 0.1):
            partition = message.partition()
            if message.error() is not None or partition not in open_partitions:
                continue
            last_message = time.monotonic()
            if not handle(message):
                open_partitions.discard(partition)
                consumer.pause([TopicPartition(topic, partition)])
    return open_partitions
