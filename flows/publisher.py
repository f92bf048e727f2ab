"""The flow's only output: session hashes and popularity to Redis, examples and DLQ to Kafka.

Delivery guarantee: at least once, with idempotent effects. Every Redis write sets
absolute values (HSET of a whole session hash, ZADD of absolute scores), so writing a
batch again after a crash leaves the same state. Kafka messages are produced
asynchronously and flushed in ``snapshot`` (which also waits for the queued Redis
writes); Bytewax calls it before it commits an epoch, so a committed epoch never has an
unwritten session or an undelivered example. Messages of the epoch a crash
interrupted are produced again after the restart (consumers drop them by
``example_id``, or by (topic, partition, offset) for dead letters).

One pipelined round trip per output batch, run by a ``BackgroundWriter`` so the worker
computes the next batch meanwhile; only sessions changed in the batch are written.
Session hashes go through a small Lua script (HSET + EXPIRE per session, at most
``SESSIONS_PER_SCRIPT`` sessions per call, under a millisecond of server time, so serving
reads are never held up for long; ZADDs are chunked the same way): redis-py
would otherwise spend more time packing 2 commands per session than the flow spends on
the features. Freshness (Kafka produce time to the acknowledged Redis write) is recorded
for every event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import redis
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, Message, Producer
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from flows.background_writer import BackgroundWriter
from flows.item_popularity import PopularityUpdate
from flows.metrics import FlowMetrics
from flows.shard import ShardOutput
from streamrec.kafka_clients import make_producer
from streamrec.redis_keys import RedisKeys
from streamrec.session_features import FIELDS
from streamrec.settings import Settings
from streamrec.topics import Topics

ZADD_CHUNK = 500
REDIS_RETRIES = 5
SESSIONS_PER_SCRIPT = 100

# ARGV: ttl_s, field count n, n field names, then per session: key and n values.
WRITE_SESSIONS_LUA = """
local ttl = ARGV[1]
local n = tonumber(ARGV[2])
local args = {}
local i = 3 + n
while i <= #ARGV do
  for f = 1, n do
    args[2 * f - 1] = ARGV[2 + f]
    args[2 * f] = ARGV[i + f]
  end
  redis.call('HSET', ARGV[i], unpack(args))
  redis.call('EXPIRE', ARGV[i], ttl)
  i = i + 1 + n
end
return (i - 3 - n) / (n + 1)
"""

PublishItem = ShardOutput | PopularityUpdate


@dataclass(slots=True)
class FreshnessLog:
    """Keeps every event's produce, read and Redis-ack times (epoch ms) for a benchmark.

    The flow itself only feeds the Prometheus histograms; a benchmark passes one of these
    to get exact percentiles and to leave out its warm-up.
    """

    batches: list[tuple[np.ndarray, np.ndarray, float]]

    def add(self, produce_ms: np.ndarray, read_ms: np.ndarray, ack_ms: float) -> None:
        self.batches.append((produce_ms, read_ms, ack_ms))

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(produce, read, ack) times of every event recorded so far, and forget them."""
        taken, self.batches = self.batches, []
        if not taken:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        return (
            np.concatenate([produced for produced, _, _ in taken]),
            np.concatenate([read for _, read, _ in taken]),
            np.concatenate([np.full(len(produced), ack) for produced, _, ack in taken]),
        )


class _Clients:
    """The Redis client and the Kafka producer shared by a process's output partitions."""

    def __init__(self, settings: Settings) -> None:
        self.delivery_errors: list[str] = []
        self.redis = redis.Redis.from_url(
            settings.redis.redis_url.get_secret_value(),
            socket_timeout=settings.redis.redis_timeout_s,
            socket_connect_timeout=settings.redis.redis_timeout_s,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_RETRIES),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        self.write_sessions = self.redis.register_script(WRITE_SESSIONS_LUA)
        self.writer = BackgroundWriter("streamrec-flow-redis")
        self.producer: Producer = make_producer(
            settings.kafka,
            **{"delivery.report.only.error": True, "on_delivery": self._on_error},
        )

    def _on_error(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.delivery_errors.append(f"{msg.topic()}: {err}")


class _PublishPartition(StatefulSinkPartition[PublishItem, None]):
    def __init__(
        self,
        clients: _Clients,
        settings: Settings,
        metrics: FlowMetrics,
        log: FreshnessLog | None,
    ) -> None:
        self._clients = clients
        self._metrics = metrics
        self._keys = RedisKeys(settings.redis.key_prefix)
        self._ttl_s = settings.flow.session_ttl_s
        self._popular_size = settings.flow.popular_size
        topics = Topics.from_settings(settings.kafka)
        self._examples_topic = topics.training_examples
        self._dlq_topic = topics.events_dlq
        self._log = log
        # Item categories already written by this process: a category is written when it is
        # first seen or changes, not on every click (HSET is idempotent, so a restart that
        # forgets this only writes them once more).
        self._categories_written: dict[str, str] = {}

    def write_batch(self, values: list[PublishItem]) -> None:
        pipe = self._clients.redis.pipeline(transaction=False)
        session_key = self._keys.session
        header: list[bytes | str | int] = [self._ttl_s, len(FIELDS), *FIELDS]
        args = list(header)
        produce_ms: list[int] = []
        read_ms: list[float] = []
        sessions = duplicates = late = evicted = commands = 0
        for value in values:
            if isinstance(value, PopularityUpdate):
                commands += self._queue_popularity(pipe, value)
                continue
            for session_id, fields in value.sessions.items():
                args.append(session_key(session_id))
                args.extend(fields.values())
                sessions += 1
                if sessions % SESSIONS_PER_SCRIPT == 0:
                    self._clients.write_sessions(args=args, client=pipe)
                    args = list(header)
            commands += self._queue_categories(pipe, value.item_categories)
            produce_ms.extend(value.produce_ms)
            read_ms.extend(value.read_ms)
            duplicates += value.duplicates
            late += value.late
            evicted += value.evicted
        if len(args) > len(header):
            self._clients.write_sessions(args=args, client=pipe)
        commands += 2 * sessions
        if commands:
            self._clients.writer.submit(partial(self._execute, pipe, commands, produce_ms, read_ms))
        self._produce(values)
        metrics = self._metrics
        metrics.sessions_written.inc(sessions)
        metrics.duplicates.inc(duplicates)
        metrics.late_events.inc(late)
        metrics.sessions_evicted.inc(evicted)

    def _execute(
        self, pipe: Any, commands: int, produce_ms: list[int], read_ms: list[float]
    ) -> None:
        """On the writer thread: one round trip, then latency and freshness at the ack."""
        started = time.perf_counter()
        pipe.execute()
        self._metrics.redis_write.observe(time.perf_counter() - started)
        self._metrics.redis_commands.inc(commands)
        if produce_ms:
            ack_ms = time.time() * 1000.0
            produced = np.asarray(produce_ms, dtype=np.float64)
            read = np.asarray(read_ms, dtype=np.float64)
            self._metrics.freshness.observe_many((ack_ms - produced) / 1000.0)
            self._metrics.in_flow.observe_many((ack_ms - read) / 1000.0)
            if self._log is not None:
                self._log.add(produced, read, ack_ms)

    def _queue_categories(self, pipe: Any, categories: dict[str, str]) -> int:
        """Queue HSETs of item -> category for new or changed pairs; return how many."""
        written = self._categories_written
        changed = {item: cat for item, cat in categories.items() if written.get(item) != cat}
        if not changed:
            return 0
        written.update(changed)
        pairs = list(changed.items())
        for start in range(0, len(pairs), ZADD_CHUNK):
            pipe.hset(self._keys.item_categories, mapping=dict(pairs[start : start + ZADD_CHUNK]))
        return (len(pairs) + ZADD_CHUNK - 1) // ZADD_CHUNK

    def _queue_popularity(self, pipe: Any, update: PopularityUpdate) -> int:
        """Queue the ZADDs (and the rebuild) of ``update``; return how many commands."""
        if not update.scores:
            return 0
        queued = len(pipe)
        target = self._keys.popular_rebuild if update.rebuild else self._keys.popular
        if update.rebuild:
            pipe.delete(target)
        pairs = list(update.scores.items())
        for start in range(0, len(pairs), ZADD_CHUNK):
            pipe.zadd(target, dict(pairs[start : start + ZADD_CHUNK]))
        pipe.zremrangebyrank(target, 0, -(self._popular_size + 1))
        if update.rebuild:
            pipe.rename(target, self._keys.popular)
        return len(pipe) - queued

    def _produce(self, values: list[PublishItem]) -> None:
        producer = self._clients.producer
        examples = dead_letters = 0
        for value in values:
            if isinstance(value, PopularityUpdate):
                continue
            for key, payload, source_ms in value.examples:
                _produce_one(producer, self._examples_topic, key, payload, source_ms)
            for key, payload in value.dead_letters:
                _produce_one(producer, self._dlq_topic, key, payload)
            examples += len(value.examples)
            dead_letters += len(value.dead_letters)
        producer.poll(0)
        if examples:
            self._metrics.messages_out.labels(self._examples_topic).inc(examples)
        if dead_letters:
            self._metrics.messages_out.labels(self._dlq_topic).inc(dead_letters)

    def snapshot(self) -> None:
        """Called before Bytewax commits an epoch: every write and message of it is done."""
        self._clients.writer.drain()
        remaining = self._clients.producer.flush(30)
        if remaining or self._clients.delivery_errors:
            errors = self._clients.delivery_errors[:5]
            raise RuntimeError(f"undelivered messages: {remaining} queued, errors {errors}")
        return None

    def close(self) -> None:
        self.snapshot()


def _produce_one(
    producer: Producer, topic: str, key: bytes, payload: bytes, timestamp_ms: int = 0
) -> None:
    """Produce, waiting for queue space; ``timestamp_ms`` 0 lets the producer stamp it."""
    while True:
        try:
            producer.produce(topic, payload, key, timestamp=timestamp_ms)
            return
        except BufferError:
            producer.poll(0.05)


class FeaturePublisher(FixedPartitionedSink[PublishItem, None]):
    """Output partitions ``publish-0..n-1``; items are routed by their shard index."""

    def __init__(
        self,
        settings: Settings,
        metrics: FlowMetrics,
        freshness_log: FreshnessLog | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.freshness_log = freshness_log
        self._clients: _Clients | None = None

    def list_parts(self) -> list[str]:
        return [f"publish-{index}" for index in range(self.settings.flow.publish_partitions)]

    def part_fn(self, item_key: str) -> int:
        """Shard ``shard-NNN`` goes to partition NNN (wrapped); popularity to partition 0."""
        return int(item_key[6:]) if item_key.startswith("shard-") else 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _PublishPartition:
        if self._clients is None:
            self._clients = _Clients(self.settings)
        return _PublishPartition(self._clients, self.settings, self.metrics, self.freshness_log)
