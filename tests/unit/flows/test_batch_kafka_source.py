"""The source partition notices a topic emptied under it and reads it again from the start."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError

from flows import batch_kafka_source
from flows.batch_kafka_source import RECEIVE_MAX_BYTES, BatchKafkaSource, TopicReset


class Message:
    def __init__(self, offset: int, error: KafkaError | None = None) -> None:
        self._offset, self._error = offset, error

    def offset(self) -> int:
        return self._offset

    def error(self) -> KafkaError | None:
        return self._error


class Consumer:
    """Serves ``polls`` one per ``consume``; ``end`` is the last fetch's high watermark."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.assigned: list[int] = []
        self.polls: list[list[Message]] = []
        self.end = -1001  # librdkafka's "no fetch answer yet"

    def assign(self, partitions: list) -> None:
        self.assigned.append(partitions[0].offset)

    def consume(self, count: int, timeout: float) -> list[Message]:
        return self.polls.pop(0) if self.polls else []

    def get_watermark_offsets(self, partition: object, cached: bool = False) -> tuple[int, int]:
        assert cached, "a broker round trip on every idle poll"
        return (0, self.end)

    def close(self) -> None:
        return None


@pytest.fixture
def resets(monkeypatch: pytest.MonkeyPatch) -> list[TopicReset]:
    monkeypatch.setattr(batch_kafka_source, "Consumer", Consumer)
    return []


def partition(resets: list[TopicReset], resume: int | None, stop_at_end: bool = False):
    source = BatchKafkaSource({}, ["clicks"], stop_at_end=stop_at_end, on_reset=resets.append)
    return source.build_part("kafka_in", "3-clicks", resume)


def test_the_consumer_reads_any_message_size_and_reports_out_of_range(
    resets: list[TopicReset],
) -> None:
    config = partition(resets, None)._consumer.config
    assert config["receive.message.max.bytes"] == RECEIVE_MAX_BYTES
    assert config["auto.offset.reset"] == "error"


def test_a_recovered_offset_beyond_the_partitions_end_restarts_from_the_beginning(
    resets: list[TopicReset],
) -> None:
    part = partition(resets, 500)
    consumer = part._consumer
    assert part.next_batch() == [] and not resets, "no fetch answer yet: nothing known"
    consumer.end = 40
    assert part.next_batch() == []
    assert resets == [TopicReset("clicks", 3, 500, 40)]
    assert consumer.assigned == [500, OFFSET_BEGINNING]
    assert part.snapshot() == OFFSET_BEGINNING
    consumer.polls = [[Message(0), Message(1)]]
    [batch] = part.next_batch()
    assert len(batch.messages) == 2 and part.snapshot() == 2
    assert part.next_batch() == [] and len(resets) == 1, "position 2 is within the end 40"


def test_at_the_end_of_an_intact_partition_nothing_is_reset(resets: list[TopicReset]) -> None:
    part = partition(resets, 500, stop_at_end=True)
    part._consumer.end = 500
    part._consumer.polls = [[Message(500, KafkaError(KafkaError._PARTITION_EOF))]]
    assert part.next_batch() == []
    with pytest.raises(StopIteration):
        part.next_batch()
    assert not resets


def test_out_of_range_from_kafka_restarts_from_the_beginning(resets: list[TopicReset]) -> None:
    part = partition(resets, 500)
    part._consumer.polls = [[Message(500, KafkaError(KafkaError._AUTO_OFFSET_RESET))]]
    assert part.next_batch() == []
    assert resets == [TopicReset("clicks", 3, 500, -1)]
    assert part._consumer.assigned[-1] == OFFSET_BEGINNING


def test_other_consumer_errors_still_stop_the_flow(resets: list[TopicReset]) -> None:
    part = partition(resets, 5)
    part._consumer.polls = [[Message(5, KafkaError(KafkaError._TRANSPORT))]]
    with pytest.raises(RuntimeError, match=r"clicks\[3\]"):
        part.next_batch()
    assert not resets


def test_a_tailing_partition_that_is_told_to_stop_ends_once_caught_up(
    resets: list[TopicReset],
) -> None:
    part = partition(resets, None)
    part._stop = stop = threading.Event()
    part._consumer.polls = [[Message(0), Message(1, KafkaError(KafkaError._PARTITION_EOF))]]
    assert len(part.next_batch()) == 1
    stop.set()
    with pytest.raises(StopIteration):
        part.next_batch()


def test_a_full_batch_is_followed_at_once_and_a_short_one_after_the_fetch_wait(
    resets: list[TopicReset],
) -> None:
    source = BatchKafkaSource({}, ["clicks"], batch_size=3, fetch_wait_max_ms=7)
    part = source.build_part("kafka_in", "3-clicks", None)
    part._consumer.polls = [[Message(0), Message(1), Message(2)], [Message(3)]]
    assert len(part.next_batch()[0].messages) == 3
    assert part.next_awake() is None, "a backlog is read without pause"
    before = datetime.now(UTC)
    assert len(part.next_batch()[0].messages) == 1
    after = datetime.now(UTC)
    awake, wait = part.next_awake(), timedelta(milliseconds=7)
    assert awake is not None and before + wait <= awake <= after + wait
    assert part.next_batch() == [] and part.next_awake() is not None, "idle: paced too"
