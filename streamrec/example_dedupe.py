"""Repeated training examples, recognised by ``example_id`` in bounded memory.

The flow delivers every training example at least once: after a crash it emits again what
it had emitted since its last snapshot (docs/flow.md). Every consumer that must count an
example once (the learner, the drift monitor, the fine-tune's replay) passes what it reads
through ``ExampleDedupe`` and drops the repeats.

**What counts as a repeat.** A record whose ``example_id`` an earlier record of the same
partition, at most ``window`` offsets before it, also carries (a repeat has the same key,
the session id, so it lands in the same partition). The decision depends on the records
alone, not on what was read before, which is what lets a restarted consumer rebuild the
same state. A record at or below the newest offset already read in its partition is a
re-read (a consumer group that rebalanced) and is not counted again; a reader that goes
back on purpose (the learner adopting another version) rebuilds a fresh window instead.

**The bound.** The flow's repeats follow their first copy by at most what the flow emits
per partition in one snapshot interval (its recovery replay emits them first), so the
window (``FlowSettings.repeat_window``, 50,000) covers 10,000 examples/s per partition at
the default 5 s interval. A repeat from further back is taken for a new example and
counted again; raise the window with the flow's rate or interval. Memory: at most
``window`` ids per partition (about 120 bytes each).

**Across restarts.** The window at a position is a function of the partition's records
before it, so a restarted consumer rebuilds it by reading back the ``window`` records
before where it resumes (``rebuild_dedupe``). Nothing is stored: the topic is the durable
copy, it agrees with a learner's version offsets or a group's committed offsets by
construction, and it survives a Redis reset.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from confluent_kafka import Message, TopicPartition

from streamrec.kafka_clients import make_consumer, read_until_done
from streamrec.settings import KafkaSettings
from streamrec.structured_log import log_event
from streamrec.training_examples import decode_example

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _PartitionWindow:
    """One partition's recent ids: ``example_id`` -> offset of its newest copy, oldest first."""

    offsets: OrderedDict[str, int] = field(default_factory=OrderedDict)
    newest: int = -1  # the highest offset read


class ExampleDedupe:
    """The ids of the last ``window`` records of each partition (see the module docstring).

    >>> dedupe = ExampleDedupe(window=3)
    >>> [dedupe.is_new(0, offset, eid) for offset, eid in enumerate("abab")]
    [True, True, False, False]
    >>> dedupe.is_new(0, 3, "c")  # offset 3 was read already: a re-read
    False
    >>> [dedupe.is_new(0, offset, "a") for offset in (6, 7)]  # "a" (offset 2) fell out
    [True, False]
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("the window holds at least one record")
        self.window = window
        self._partitions: dict[int, _PartitionWindow] = {}

    def is_new(self, partition: int, offset: int, example_id: str) -> bool:
        """Whether the record at ``offset`` is to be counted (it is remembered either way).

        False for a repeat (a record at most ``window`` offsets before it carries the same
        ``example_id``) and for a re-read (``offset`` is not past the newest one read).
        """
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _PartitionWindow()
        if offset <= state.newest:
            return False
        state.newest = offset
        offsets = state.offsets
        limit = offset - self.window
        while offsets and next(iter(offsets.values())) < limit:
            offsets.popitem(last=False)
        seen_at = offsets.pop(example_id, None)
        offsets[example_id] = offset  # the newest copy: the window runs from there
        return seen_at is None

    def forget(self, partition: int) -> None:
        """Start ``partition`` afresh: it was emptied under the reader (a broker restarted
        empty), so its offsets count from 0 again and what it held is gone."""
        self._partitions.pop(partition, None)

    def newest(self, partition: int) -> int | None:
        """The newest offset read from ``partition`` (None before the first)."""
        state = self._partitions.get(partition)
        return None if state is None else state.newest

    def rebuild_range(self, position: int) -> tuple[int, int]:
        """The offsets ``[start, position)`` to read back before resuming at ``position``."""
        return max(0, position - self.window), position

    def __len__(self) -> int:
        """Ids remembered, over all partitions."""
        return sum(len(state.offsets) for state in self._partitions.values())


def rebuild_dedupe(
    kafka: KafkaSettings,
    topic: str,
    dedupe: ExampleDedupe,
    positions: Mapping[int, int],
    idle_s: float = 2.0,
    timeout_s: float = 120.0,
) -> int:
    """Feed ``dedupe`` the records before ``positions`` (partition -> next offset to read).

    Reads each partition's ``rebuild_range`` with a group-less assignment (nothing is
    committed). A partition that holds fewer records (retention, a new topic) ends when
    nothing arrives for ``idle_s``. Returns the number of records read.
    """
    ranges = {
        p: dedupe.rebuild_range(position) for p, position in positions.items() if position > 0
    }
    if not ranges:
        return 0
    consumer = make_consumer(kafka, "streamrec-dedupe-rebuild")
    read = 0

    def feed(message: Message) -> bool:
        nonlocal read
        offset, end = message.offset(), ranges[message.partition()][1]
        if offset < end:
            read += 1
            with contextlib.suppress(ValueError):  # not an example: skipped anyway
                example_id = decode_example(message.value()).example_id
                dedupe.is_new(message.partition(), offset, example_id)
        return offset < end - 1

    try:
        consumer.assign([TopicPartition(topic, p, start) for p, (start, _) in ranges.items()])
        short = read_until_done(consumer, topic, ranges, feed, idle_s, timeout_s)
        if short:
            log_event(
                logger, "dedupe_rebuild_short", logging.WARNING, topic=topic,
                partitions=sorted(short), read=read,
            )  # fmt: skip
    finally:
        consumer.close()
    return read
