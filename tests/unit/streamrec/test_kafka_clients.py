"""``emptied_end``: a partition that now ends before the reader's offset was emptied."""

from __future__ import annotations

from confluent_kafka import TopicPartition

from streamrec.kafka_clients import emptied_end


class FetchedWatermarks:
    """A consumer whose last fetch saw ``(low, high)`` for every partition."""

    def __init__(self, high: int) -> None:
        self.high = high
        self.asked: list[tuple[str, int, bool]] = []

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        self.asked.append((tp.topic, tp.partition, cached))
        return 0, self.high


def test_a_partition_ending_before_the_offset_was_emptied() -> None:
    consumer = FetchedWatermarks(high=30)
    assert emptied_end(consumer, "t", 2, 96) == 30
    assert consumer.asked == [("t", 2, True)]  # the fetch's answer, not a ListOffsets call


def test_a_partition_at_or_past_the_offset_was_not() -> None:
    assert emptied_end(FetchedWatermarks(high=96), "t", 0, 96) is None
    assert emptied_end(FetchedWatermarks(high=500), "t", 0, 96) is None


def test_nothing_is_known_before_a_fetch_or_before_any_read() -> None:
    assert emptied_end(FetchedWatermarks(high=-1001), "t", 0, 96) is None  # no fetch yet
    assert emptied_end(FetchedWatermarks(high=0), "t", 0, 0) is None
