"""The flow's only output: session hashes and popularity to Redis, examples and DLQ to Kafka.

Delivery guarantee: at least once, with idempotent effects. Every Redis write sets
absolute values (HSET of a whole session hash, ZADD of absolute scores, HSET of absolute
exposure counts), so writing a
batch again after a crash leaves the same state. Kafka messages are produced
asynchronously and flushed in ``snapshot`` (which also waits for the queued Redis
writes); Bytewax calls it before it commits an epoch, so a committed epoch never has an
unwritten session or an undelivered example. Messages of the epoch a crash
interrupted are produced again after the restart (consumers drop them by
``example_id``, or by (topic, partition, offset) for dead letters).

One pipelined round trip per output batch (on a Redis Cluster, one per node:
``cluster_batch.py``), run by a ``BackgroundWriter`` so the worker computes the next batch
meanwhile; only sessions changed in the batch are written.
Session hashes go through a small Lua script (HSET + EXPIRE per session, at most
``SESSIONS_PER_SCRIPT`` sessions per call, under a millisecond of server time, so serving
reads are never held up for long; ZADDs are chunked the same way): redis-py
would otherwise spend more time packing 2 commands per session than the flow spends on
the features. Freshness (Kafka produce time to the acknowledged Redis write) is recorded
for every event.

After Redis lost data, the owners of the flow's state write all of it again
(``redis_resync.py``): shards and popularity send their full state through here, followed by
a ``ResyncNote``; each output partition does the same for the item categories it keeps. A
message the producer or the broker refuses as too large is logged and counted
(``streamrec_flow_messages_refused_total``), never retried: a retry, or a crash and restart,
would meet the same message again.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import orjson
import redis
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.retry import Retry

from flows.background_writer import BackgroundWriter
from flows.cluster_batch import ALLOW_CROSS_SLOT, ClusterBatch
from flows.exposure_counts import CountsUpdate
from flows.failure_log import closes_quietly, logs_failure
from flows.item_popularity import PopularityUpdate
from flows.metrics import FlowMetrics
from flows.redis_resync import RedisMarker, ResyncCheck, ResyncNote
from flows.shard import ShardOutput
from streamrec.alert_sender import AlertSender
from streamrec.alerts import make_alert
from streamrec.kafka_clients import make_producer
from streamrec.redis_connection import connect_redis
from streamrec.redis_keys import RedisKeys
from streamrec.session_features import FIELDS
from streamrec.settings import Settings
from streamrec.structured_log import log_event
from streamrec.topics import Topics

logger = logging.getLogger("streamrec.flow")

ZADD_CHUNK = 500
REDIS_RETRIES = 5
SESSIONS_PER_SCRIPT = 100

# ARGV: ttl_s, field count n, n field names, sizes, strings. ``strings`` holds, per session,
# its key and its n values, concatenated; ``sizes`` their byte lengths (uint32, little-endian).
# Two arguments instead of 1 + n per session: redis-py and hiredis take about 0.2 µs to pack
# each argument, more than the flow spends on a session's features.
WRITE_SESSIONS_LUA = """
local ttl = ARGV[1]
local n = tonumber(ARGV[2])
local sizes, strings = ARGV[3 + n], ARGV[4 + n]
local args = {}
for f = 1, n do
  args[2 * f - 1] = ARGV[2 + f]
end
local at, start, written = 1, 1, 0
local function take()
  local size
  size, at = struct.unpack('<I4', sizes, at)
  local value = string.sub(strings, start, start + size - 1)
  start = start + size
  return value
end
while at <= #sizes do
  local key = take()
  for f = 1, n do
    args[2 * f] = take()
  end
  redis.call('HSET', key, unpack(args))
  redis.call('EXPIRE', key, ttl)
  written = written + 1
end
return written
"""

# On a Redis Cluster: the same script, allowed to write every session of the node it runs
# on (``flows/cluster_batch.py`` sends it only sessions of one node).
CLUSTER_WRITE_SESSIONS_LUA = ALLOW_CROSS_SLOT + WRITE_SESSIONS_LUA

PublishItem = ShardOutput | PopularityUpdate | CountsUpdate | ResyncNote


def session_script_args(ttl_s: int, strings: list[bytes]) -> list[bytes | int | str]:
    """The session script's ARGV for ``strings``: per session, its key and its values in
    ``FIELDS`` order."""
    sizes = struct.pack(f"<{len(strings)}I", *map(len, strings))
    return [ttl_s, len(FIELDS), *FIELDS, sizes, b"".join(strings)]


def _run_session_script(script: Script, ttl_s: int, strings: list[bytes], client: Any) -> None:
    """``write_sessions`` on one server: the script call joins the pipeline."""
    script(args=session_script_args(ttl_s, strings), client=client)


def _queue_cluster_sessions(strings: list[bytes], client: ClusterBatch) -> None:
    """``write_sessions`` on a cluster: the sessions join the batch, which splits them by
    node when it is sent."""
    client.queue_sessions(strings)


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
    """What a process's output partitions share: Redis, the Kafka producer, the alerts, and
    the Redis marker their re-sync checks read."""

    def __init__(
        self, settings: Settings, metrics: FlowMetrics, alerts: AlertSender, marker: RedisMarker
    ) -> None:
        self.metrics = metrics
        self.alerts = alerts
        self.marker = marker
        self.delivery_errors: list[str] = []
        backoff = ExponentialBackoff(cap=1.0, base=0.05)
        self.redis = connect_redis(
            settings.redis.redis_url.get_secret_value(),
            socket_timeout=settings.redis.redis_timeout_s,
            socket_connect_timeout=settings.redis.redis_timeout_s,
            retry=Retry(backoff, REDIS_RETRIES),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        ttl_s = settings.flow.session_ttl_s
        if isinstance(self.redis, RedisCluster):
            cluster, script = self.redis, self.redis.register_script(CLUSTER_WRITE_SESSIONS_LUA)
            script_args = partial(session_script_args, ttl_s)
            self.new_batch: Callable[[], Any] = lambda: ClusterBatch(
                cluster, script, script_args, SESSIONS_PER_SCRIPT, REDIS_RETRIES, backoff.compute
            )
            self.write_sessions: Callable[[list[bytes], Any], None] = _queue_cluster_sessions
        else:
            self.new_batch = partial(self.redis.pipeline, transaction=False)
            script = self.redis.register_script(WRITE_SESSIONS_LUA)
            self.write_sessions = partial(_run_session_script, script, ttl_s)
        self.writer = BackgroundWriter("streamrec-flow-redis")
        self.producer: Producer = make_producer(
            settings.kafka,
            **{"delivery.report.only.error": True, "on_delivery": self._on_error},
        )

    def _on_error(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:  # the broker's limit: never retried
            refused(self.metrics, msg.topic() or "", msg.key() or b"", len(msg.value() or b""))
        else:
            self.delivery_errors.append(f"{msg.topic()}: {err}")


class _PublishPartition(StatefulSinkPartition[PublishItem, bytes]):
    """Writes its share of the flow's output. Its recovery state is the item categories it
    has written and the Redis marker it last wrote all of them under (categories are not
    in any other state of the flow, and a re-sync must be able to write them again)."""

    def __init__(
        self,
        clients: _Clients,
        settings: Settings,
        metrics: FlowMetrics,
        log: FreshnessLog | None,
        resume_state: bytes | None,
    ) -> None:
        self._clients = clients
        self._metrics = metrics
        self._keys = RedisKeys(settings.redis.key_prefix)
        self._popular_size = settings.flow.popular_size
        topics = Topics.from_settings(settings.kafka)
        self._examples_topic = topics.training_examples
        self._dlq_topic = topics.events_dlq
        self._log = log
        self._check = ResyncCheck(clients.marker, settings.flow.redis_check_s)
        # Item categories written: a category is written when it is first seen or changes,
        # not on every click; the whole map again after Redis lost data.
        self._categories: dict[str, str] = {}
        self._synced: str | None = None
        if resume_state is not None:
            state = orjson.loads(resume_state)
            self._categories, self._synced = state["categories"], state["synced"]
        self._state: bytes | None = resume_state

    @logs_failure
    def write_batch(self, values: list[PublishItem]) -> None:
        pipe = self._clients.new_batch()
        commands = self._resync_categories(pipe)
        session_prefix = self._keys.session("")
        strings: list[bytes] = []  # per session: key and values (``session_script_args``)
        produce_ms: list[int] = []
        read_ms: list[float] = []
        sessions = duplicates = late = evicted = 0
        metrics = self._metrics
        for value in values:
            if isinstance(value, PopularityUpdate):
                commands += self._queue_popularity(pipe, value)
                continue
            if isinstance(value, ResyncNote):
                self._resynced(value)
                continue
            if isinstance(value, CountsUpdate):
                commands += self._hset_counts(pipe, self._keys.item_shown, value.shown)
                commands += self._hset_counts(pipe, self._keys.item_clicked, value.clicked)
                continue
            for session_id, fields in value.sessions.items():
                strings.append((session_prefix + session_id).encode())
                strings += fields
                sessions += 1
                if sessions % SESSIONS_PER_SCRIPT == 0:
                    self._clients.write_sessions(strings, pipe)
                    strings = []
            commands += self._queue_categories(pipe, value.item_categories)
            produce_ms.extend(value.produce_ms)
            read_ms.extend(value.read_ms)
            duplicates += value.duplicates
            late += value.late
            evicted += value.evicted
            if value.exposures:
                clicked = sum(1 for outcome in value.exposures if outcome.was_clicked)
                metrics.exposure_outcomes.labels("clicked").inc(clicked)
                metrics.exposure_outcomes.labels("ignored").inc(len(value.exposures) - clicked)
        if strings:
            self._clients.write_sessions(strings, pipe)
        commands += 2 * sessions
        if commands:
            self._clients.writer.submit(partial(self._execute, pipe, commands, produce_ms, read_ms))
        self._produce(values)
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

    def _resync_categories(self, pipe: Any) -> int:
        """When Redis lost data, queue every category this partition has written; how many
        commands (0 most of the time: the check reads the marker once per interval)."""
        resync = self._check.due(self._synced)
        if resync is None:
            return 0
        commands = self._hset_categories(pipe, list(self._categories.items()))
        self._synced = resync.marker
        self._state = None
        self._resynced(
            ResyncNote("categories", len(self._categories), resync.marker, resync.detected)
        )
        return commands

    def _resynced(self, note: ResyncNote) -> None:
        """Count and log an owner's re-sync (not an owner's first check with nothing to write:
        every start has those); the owner that found the loss raises the alert."""
        if note.entries:
            self._metrics.resyncs.labels(note.state).inc()
            self._metrics.resync_entries.labels(note.state).inc(note.entries)
            log_event(
                logger, "redis_resync", state=note.state, entries=note.entries, marker=note.marker
            )
        if note.detected:
            self._clients.alerts.send(
                make_alert(
                    "redis_resync", "marker_missing", math.nan, math.nan, 0, None,
                    message=f"Redis lost the flow's keys ({self._keys.flow_marker} was gone): "
                    "writing every live session, the popularity zset and the item categories "
                    f"again from the flow's state (new marker {note.marker})",
                )
            )  # fmt: skip

    def _queue_categories(self, pipe: Any, categories: dict[str, str]) -> int:
        """Queue HSETs of item -> category for new or changed pairs; return how many."""
        written = self._categories
        changed = {item: cat for item, cat in categories.items() if written.get(item) != cat}
        if not changed:
            return 0
        written.update(changed)
        self._state = None
        return self._hset_categories(pipe, list(changed.items()))

    def _hset_categories(self, pipe: Any, pairs: list[tuple[str, str]]) -> int:
        return self._hset_counts(pipe, self._keys.item_categories, dict(pairs))

    def _hset_counts(self, pipe: Any, key: str, counts: dict[str, int] | dict[str, str]) -> int:
        """Queue chunked HSETs of absolute values per item; return how many commands."""
        pairs = list(counts.items())
        for start in range(0, len(pairs), ZADD_CHUNK):
            pipe.hset(key, mapping=dict(pairs[start : start + ZADD_CHUNK]))
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
            if not isinstance(value, ShardOutput):
                continue
            examples += self._produce_examples(value.examples)
            for key, payload in value.dead_letters:
                dead_letters += self._produce_one(self._dlq_topic, key, payload)
        producer.poll(0)
        if examples:
            self._metrics.messages_out.labels(self._examples_topic).inc(examples)
        if dead_letters:
            self._metrics.messages_out.labels(self._dlq_topic).inc(dead_letters)

    def _produce_examples(self, examples: list[tuple[bytes, bytes, int]]) -> int:
        """Produce ``(key, value, timestamp_ms)`` examples; how many were queued. The loop
        stays tight: only a full queue or a refusal takes the slow path of ``_produce_one``."""
        topic = self._examples_topic
        produce = self._clients.producer.produce
        queued = 0
        for key, payload, timestamp_ms in examples:
            try:
                produce(topic, payload, key, timestamp=timestamp_ms)
                queued += 1
            except (BufferError, KafkaException):
                queued += self._produce_one(topic, key, payload, timestamp_ms)
        return queued

    def _produce_one(self, topic: str, key: bytes, payload: bytes, timestamp_ms: int = 0) -> bool:
        """Produce, waiting for queue space; ``timestamp_ms`` 0 lets the producer stamp it.

        A message over the producer's size limit is refused for good: retrying it, or
        stopping the flow, would read it again and fail again (a crash loop). It is logged
        and counted as a bug instead (every message the flow makes is bounded below it), and
        False is returned.
        """
        producer = self._clients.producer
        while True:
            try:
                producer.produce(topic, payload, key, timestamp=timestamp_ms)
                return True
            except BufferError:
                producer.poll(0.05)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise
                refused(self._metrics, topic, key, len(payload))
                return False

    @logs_failure
    def snapshot(self) -> bytes:
        """Called before Bytewax commits an epoch: every write and message of it is done.

        Returns the partition's state; encoded again only when it changed.
        """
        self._clients.writer.drain()
        remaining = self._clients.producer.flush(30)
        if remaining or self._clients.delivery_errors:
            errors = self._clients.delivery_errors[:5]
            raise RuntimeError(f"undelivered messages: {remaining} queued, errors {errors}")
        if self._state is None:
            self._state = orjson.dumps({"categories": self._categories, "synced": self._synced})
        return self._state

    @closes_quietly
    def close(self) -> None:
        self.snapshot()


def refused(metrics: FlowMetrics, topic: str, key: bytes, size: int) -> None:
    """A message refused as too large: an error line and a count, never a retry."""
    metrics.messages_refused.labels(topic).inc()
    log_event(
        logger,
        "flow_message_refused",
        logging.ERROR,
        topic=topic,
        key=key[:200].decode("utf-8", "replace"),
        size=size,
        reason="message too large",
    )


class FeaturePublisher(FixedPartitionedSink[PublishItem, bytes]):
    """Output partitions ``publish-0..n-1``; items are routed by their shard index."""

    def __init__(
        self,
        settings: Settings,
        metrics: FlowMetrics,
        alerts: AlertSender,
        marker: RedisMarker,
        freshness_log: FreshnessLog | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.alerts = alerts
        self.marker = marker
        self.freshness_log = freshness_log
        self._clients: _Clients | None = None

    @logs_failure
    def list_parts(self) -> list[str]:
        return [f"publish-{index}" for index in range(self.settings.flow.publish_partitions)]

    def part_fn(self, item_key: str) -> int:
        """Shard ``shard-NNN`` goes to partition NNN (wrapped); popularity to partition 0."""
        return int(item_key[6:]) if item_key.startswith("shard-") else 0

    @logs_failure
    def build_part(
        self, step_id: str, for_part: str, resume_state: bytes | None
    ) -> _PublishPartition:
        if self._clients is None:
            self._clients = _Clients(self.settings, self.metrics, self.alerts, self.marker)
        return _PublishPartition(
            self._clients, self.settings, self.metrics, self.freshness_log, resume_state
        )
