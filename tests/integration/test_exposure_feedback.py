"""Exposure feedback on the real broker and Redis: the flow joins impressions with what the
session did next and emits each outcome once, across a restart, with the exposure counts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from streamrec.events import Event
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings
from streamrec.topics import Topics
from streamrec.training_examples import EXPOSURE, TrainingExample, decode_example
from tests.integration.test_feature_flow import (
    derived_keys_removed,  # noqa: F401 - autouse fixture: removes the tagged keys
    flow_settings,
    produce_events,
    run_flow_in_process,
)
from tests.kafka_reading import read_topic

pytestmark = pytest.mark.integration

HORIZON_S = 60


def click(eid: str, session: str, ts: int, item: str, rid: str | None = None) -> Event:
    return Event(eid, "click", session, ts, item_id=item, request_id=rid)


def shown(rid: str, session: str, ts: int, *items: str) -> Event:
    return Event("imp-" + rid, "impression", session, ts, request_id=rid, items=items,
                 model_version=3, arm="online")  # fmt: skip


def all_examples(settings: Settings, expected: int) -> list[TrainingExample]:
    """Every example on the examples topic: read until one more than ``expected`` arrived or
    a short deadline passed (the flow runs have ended, so all of them are there by then)."""
    topic = Topics.from_settings(settings.kafka).training_examples
    messages = read_topic(settings.kafka, topic, expected + 1, timeout_s=5)
    return [decode_example(message.value()) for message in messages]


def test_a_click_on_a_shown_item_is_positive_nothing_negative_once_across_a_restart(
    settings: Settings, tmp_path: Path
) -> None:
    flow = flow_settings(settings, "exposure", state_shards=1, exposure_horizon_s=HORIZON_S)
    t0 = int(time.time() * 1000) - 3_600_000
    produce_events(
        flow,
        [
            click("c1", "s1", t0, "h1"),
            click("c2", "s2", t0, "h2"),
            shown("r1", "s1", t0 + 10, "a", "b", "c"),
            shown("r2", "s2", t0 + 10, "x", "y"),
        ],
    )
    run_flow_in_process(flow)  # both outcomes still open when it stops
    produce_events(
        flow,
        [
            click("c3", "s1", t0 + 20, "b", "r1"),  # after the restart: from the saved state
            click("c4", "s3", t0 + HORIZON_S * 1000 + 100, "z"),  # event time passes the horizon
        ],
    )
    run_flow_in_process(flow)
    run_flow_in_process(flow)  # a third start with nothing new emits nothing again

    # c3's next-click example and the two exposure examples (c1, c2 and c4 are first clicks)
    found = all_examples(flow, expected=3)
    by_id = {example.example_id: example for example in found}
    assert sorted(example.example_id for example in found) == ["c3", "exposure:r1", "exposure:r2"]
    assert by_id["exposure:r1"].kind == by_id["exposure:r2"].kind == EXPOSURE
    positive, negative = by_id["exposure:r1"], by_id["exposure:r2"]
    assert (positive.history, positive.target_item, positive.negatives) == (
        ("h1",),
        "b",
        ("a", "c"),
    )
    assert (negative.history, negative.target_item, negative.negatives) == (("h2",), "", ("x", "y"))

    client = redis.Redis.from_url(flow.redis.redis_url.get_secret_value(), decode_responses=True)
    keys = RedisKeys(flow.redis.key_prefix)
    assert client.hgetall(keys.item_shown) == {item: "1" for item in "abcxy"}
    assert client.hgetall(keys.item_clicked) == {"b": "1"}
