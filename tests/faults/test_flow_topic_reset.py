"""The memory-only broker restarts empty between two runs of the flow: nothing new is skipped.

Before: the flow resumed at its recovered offsets, which belonged to the lost topics, so it
waited there and skipped every new event below them (of 4,989 events acknowledged after
such a restart, 530 reached Redis). The broker is the test's own: the session-wide one is
never restarted.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from streamrec.events import Event
from streamrec.settings import Settings
from streamrec.topics import Topics
from tests.faults.tailing_flow import flow_alerts, log_tail
from tests.integration.test_feature_flow import (
    FLOW_TIMEOUT_S,
    decoded,
    derived_keys_removed,  # noqa: F401 - autouse fixture: removes the tagged keys
    flow_process,
    flow_settings,
    produce_events,
    read_state,
)
from tests.kafka_reading import read_topic
from tests.private_services import PrivateBroker
from tests.unit.flows.test_shard import reference_features, sample_events

pytestmark = pytest.mark.faults


def per_partition(settings: Settings, events: list[Event]) -> Counter[tuple[str, int]]:
    """How many of ``events`` each input partition holds, counted by reading them all back
    (tansu's high watermarks can undercount)."""
    topics = Topics.from_settings(settings.kafka)
    counts: Counter[tuple[str, int]] = Counter()
    for kind, topic in (("click", topics.clicks), ("purchase", topics.purchases)):
        expected = sum(event.type == kind for event in events)
        messages = read_topic(settings.kafka, topic, expected)
        assert len(messages) == expected
        counts.update((topic, message.partition()) for message in messages)
    return counts


def test_after_the_broker_restarts_empty_the_flow_reads_the_new_topics_from_the_start(
    settings: Settings, private_broker: PrivateBroker, tmp_path: Path
) -> None:
    events = sample_events(8000)
    old, new = events[:6000], events[6000:]
    on_own = private_broker.attach(settings)
    reset = flow_settings(on_own, "reset", stop_at_end=True)
    produce_events(reset, old)
    old_counts = per_partition(reset, old)
    first = flow_process(reset, log=tmp_path / "first.log")
    assert first.wait(FLOW_TIMEOUT_S) == 0, log_tail(tmp_path / "first.log")
    assert decoded(read_state(reset)) == reference_features(old)

    private_broker.restart_empty()
    reset = flow_settings(on_own, "reset", stop_at_end=True)  # the topics, made again
    produce_events(reset, new)
    new_counts = per_partition(reset, new)
    second = flow_process(reset, log=tmp_path / "second.log")
    try:
        returncode = second.wait(FLOW_TIMEOUT_S)
    finally:
        second.kill()
    assert returncode == 0, log_tail(tmp_path / "second.log")

    assert decoded(read_state(reset)) == reference_features(old + new)
    emptied = {place for place, count in old_counts.items() if count > new_counts[place]}
    assert emptied == old_counts.keys(), "each old partition must be longer than the new one"
    alerts = flow_alerts(reset.kafka, len(emptied) + 1, timeout_s=3)
    assert {a.detector for a in alerts} == {"topic_reset"}
    assert {(a.offsets[0].topic, a.offsets[0].partition) for a in alerts} == emptied
    assert len(alerts) == len(emptied)
    for alert in alerts:
        place = (alert.offsets[0].topic, alert.offsets[0].partition)
        assert (alert.level_before, alert.level_after) == (old_counts[place], new_counts[place])
