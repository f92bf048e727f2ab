"""Replaying the recorded sample to the real broker: every valid line, stable ids."""

from __future__ import annotations

import orjson

from loadtest.traffic_replay import replay
from streamrec.recorded_events import LineRejection, read_yoochoose
from streamrec.settings import Settings
from streamrec.topics import Topics
from tests.conftest import SAMPLE_DIR
from tests.kafka_reading import read_topic


def count_valid_lines() -> tuple[int, int, int]:
    clicks = purchases = rejected = 0
    for record in read_yoochoose(SAMPLE_DIR):
        if isinstance(record, LineRejection):
            rejected += 1
        elif record.type == "click":
            clicks += 1
        else:
            purchases += 1
    return clicks, purchases, rejected


def test_whole_sample_replays_every_valid_line_and_ids_are_stable(
    settings: Settings, topics: Topics
) -> None:
    clicks, purchases, rejected = count_valid_lines()
    assert clicks > 200_000 and purchases > 6_000

    first = replay(read_yoochoose(SAMPLE_DIR), settings.kafka, topics, progress=False)
    assert first.produced == clicks + purchases
    assert sum(first.rejected.values()) == rejected
    assert first.delivery_errors == 0

    got_purchases = read_topic(settings.kafka, topics.purchases, purchases)
    got_clicks = read_topic(settings.kafka, topics.clicks, clicks)
    assert len(got_purchases) == purchases
    assert len(got_clicks) == clicks
    first_ids = {orjson.loads(m.value())["event_id"] for m in got_purchases}
    assert len(first_ids) == purchases
    for message in got_purchases[:100]:
        assert message.key() == orjson.loads(message.value())["session_id"].encode()

    second = replay(
        read_yoochoose(SAMPLE_DIR), settings.kafka, topics, limit=50_000, progress=False
    )
    assert second.produced == 50_000
    both = read_topic(
        settings.kafka, topics.purchases, purchases + second.by_topic[topics.purchases]
    )
    assert {orjson.loads(m.value())["event_id"] for m in both} == first_ids


def test_rate_limited_replay_stops_at_limit(settings: Settings, topics: Topics) -> None:
    report = replay(
        read_yoochoose(SAMPLE_DIR), settings.kafka, topics, rate=20_000, limit=2_000, progress=False
    )
    assert report.produced == 2_000
    assert report.elapsed_s >= 2_000 / 20_000 * 0.9
