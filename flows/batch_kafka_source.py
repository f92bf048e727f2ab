"""A Bytewax Kafka source that emits one ``SourceBatch`` per poll instead of one item per message.

Same partitioning and delivery guarantees as ``bytewax.connectors.kafka.KafkaSource``
(which it mirrors): every (topic, partition) is a Bytewax input partition, read with
``assign`` (no consumer group), and its next offset is the partition's recovery state,
so after a crash the flow resumes exactly after the last snapshotted batch. What differs
is the unit: Bytewax's source builds a frozen ``KafkaSourceMessage`` per message and the
runtime moves each one separately; here a whole poll travels as one item, which removes
the per-message cost that otherwise bounds the flow (see docs/flow.md for the numbers).

Polls are paced: after a poll that did not fill a batch, the partition is polled again only
``fetch_wait_max_ms`` later (Bytewax would poll it again at once, or 1 ms after an empty
poll). While tailing, an unpaced source hands the flow a batch of a few messages per
partition per millisecond, and the per-batch work of every step (routing, one state update
per shard, one Redis round trip) then costs more than the events; paced, batches grow with
the traffic, at a cost of at most that interval of latency. A backlog fills every batch
and is read without pause.

With ``stop_at_end`` a partition finishes at the end of its topic (tests, benchmarks);
otherwise it tails until ``stop`` is set, then finishes once it has caught up with the end.
Consumer errors other than end-of-partition raise, so the flow stops and is restarted
from its last snapshot rather than skipping data.

Two faults are handled in place:

- **A topic emptied under the flow** (a memory-only broker restarted, a topic deleted and
  made again): the recovered or current offset lies beyond the partition's end. Left
  alone, the consumer waits there (tansu sends nothing; Kafka's default reset jumps to the
  end), and every event produced since, up to that offset, is skipped. The partition's end
  is the high watermark of the consumer's last fetch (``get_watermark_offsets(cached=True)``;
  tansu's ListOffsets answer undercounts by up to the last batch, its fetch answer does
  not); Kafka reports ``OFFSET_OUT_OF_RANGE`` instead (``auto.offset.reset=error``). Either
  way the partition is read again from its beginning, from what exists now, and
  ``on_reset`` is told (the ``topic_reset`` alert). Not detected: a topic that, by the time
  the flow reads it again, already holds more records than the flow's old position.
- **Huge messages**: librdkafka grows its fetch size to fit one large message, up to
  ``receive.message.max.bytes`` (100 MB by default; beyond that the partition stalls
  silently, retrying forever). It is set to its maximum here, so any message the broker
  stored is read once and refused as ``oversized`` by the flow (a bounded dead letter).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from flows.event_routing import SourceBatch
from flows.failure_log import closes_quietly, logs_failure
from streamrec.kafka_clients import emptied_end

RECEIVE_MAX_BYTES = 2_147_483_647  # librdkafka's largest receive.message.max.bytes


@dataclass(frozen=True, slots=True)
class TopicReset:
    """A partition found emptied under the flow: ``offset`` (where the flow was) lies beyond
    ``end`` (the partition's end now); it is read again from its beginning."""

    topic: str
    partition: int
    offset: int
    end: int


OnReset = Callable[[TopicReset], None]


class _BatchPartition(StatefulSourcePartition[SourceBatch, int]):
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        batch_size: int,
        poll_interval: timedelta,
        stop: threading.Event,
        on_reset: OnReset,
    ) -> None:
        self._consumer = Consumer(config)
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._awake_at: datetime | None = None
        self._stop = stop
        self._on_reset = on_reset
        self._caught_up = False

    @logs_failure
    def next_batch(self) -> list[SourceBatch]:
        messages = self._consumer.consume(self._batch_size, 0)
        full = len(messages) == self._batch_size
        self._awake_at = None if full else datetime.now(UTC) + self._poll_interval
        if not messages:
            self._restart_if_beyond_end()
            if self._caught_up and self._stop.is_set():
                raise StopIteration
            return []
        if any(message.error() is not None for message in messages):
            messages = self._drop_end_markers(messages)
            if not messages:
                return []
        else:
            self._caught_up = False
        self._offset = messages[-1].offset() + 1
        return [SourceBatch(self._topic, self._partition, messages, time.time() * 1000.0)]

    def next_awake(self) -> datetime | None:
        """Right away after a full batch; ``poll_interval`` after a short or empty one."""
        return self._awake_at

    def _drop_end_markers(self, messages: list) -> list:
        """Remove end-of-partition markers (noting whether we ended caught up); raise on errors
        (an out-of-range offset restarts the partition from its beginning instead)."""
        kept = []
        for message in messages:
            error = message.error()
            if error is None:
                kept.append(message)
                self._caught_up = False
            elif error.code() == KafkaError._PARTITION_EOF:
                self._caught_up = True
            elif error.code() == KafkaError._AUTO_OFFSET_RESET:
                self._restart_from_beginning(end=-1)
                return []
            else:
                raise RuntimeError(f"consuming {self._topic}[{self._partition}]: {error}")
        return kept

    def _restart_if_beyond_end(self) -> None:
        """Restart from the beginning when the last fetch says the partition ends before us."""
        end = emptied_end(self._consumer, self._topic, self._partition, self._offset)
        if end is not None:
            self._restart_from_beginning(end)

    def _restart_from_beginning(self, end: int) -> None:
        reset = TopicReset(self._topic, self._partition, self._offset, end)
        self._consumer.assign([TopicPartition(self._topic, self._partition, OFFSET_BEGINNING)])
        self._offset = OFFSET_BEGINNING
        self._caught_up = False
        self._on_reset(reset)

    def snapshot(self) -> int:
        return self._offset

    @closes_quietly
    def close(self) -> None:
        self._consumer.close()


def ignore_reset(reset: TopicReset) -> None:
    """The default ``on_reset``: the source restarts the partition, nobody is told."""


class BatchKafkaSource(FixedPartitionedSource[SourceBatch, int]):
    """Every partition of ``topics``, read from the beginning (or the recovered offset).

    ``stop`` (set it from any thread) ends a tailing source; ``ready`` is set once a
    partition has been built, i.e. the flow is about to read. ``on_reset`` is called (on the
    worker thread) for each partition found emptied under the flow.
    """

    def __init__(
        self,
        client_config: dict[str, Any],
        topics: list[str],
        *,
        batch_size: int = 2000,
        stop_at_end: bool = False,
        fetch_wait_max_ms: int = 5,
        on_reset: OnReset = ignore_reset,
    ) -> None:
        self.client_config = client_config
        self.topics = list(topics)
        self.batch_size = batch_size
        self.stop_at_end = stop_at_end
        self.fetch_wait_max_ms = fetch_wait_max_ms
        self.on_reset = on_reset
        self.stop = threading.Event()
        if stop_at_end:
            self.stop.set()
        self.ready = threading.Event()

    @logs_failure
    def list_parts(self) -> list[str]:
        admin = AdminClient(self.client_config)
        parts = []
        for topic in self.topics:
            metadata = admin.list_topics(topic, timeout=10).topics[topic]
            if metadata.error is not None:
                raise RuntimeError(f"listing partitions of {topic}: {metadata.error}")
            parts.extend(f"{index}-{topic}" for index in sorted(metadata.partitions))
        return parts

    @logs_failure
    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _BatchPartition:
        index, topic = for_part.split("-", 1)
        config = self.client_config | {
            "group.id": "streamrec-flow-unused",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": self.fetch_wait_max_ms,
            "auto.offset.reset": "error",
            "receive.message.max.bytes": RECEIVE_MAX_BYTES,
        }
        offset = OFFSET_BEGINNING if resume_state is None else resume_state
        poll_interval = timedelta(milliseconds=self.fetch_wait_max_ms)
        part = _BatchPartition(
            config, topic, int(index), offset, self.batch_size, poll_interval, self.stop,
            self.on_reset,
        )  # fmt: skip
        self.ready.set()
        return part
