"""SIGKILL the flow mid-stream, restart it: Redis ends exactly as after an uninterrupted run."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from streamrec.settings import Settings
from tests.integration.test_feature_flow import (
    FLOW_TIMEOUT_S,
    assert_popular_close,
    count_sessions,
    decoded,
    derived_keys_removed,  # noqa: F401 - autouse fixture: removes the tagged keys
    example_ids,
    expected_example_ids,
    flow_process,
    flow_settings,
    produce_events,
    read_popular,
    read_state,
    run_flow_in_process,
)
from tests.unit.flows.test_shard import reference_features, sample_events

pytestmark = pytest.mark.faults


def wait_until(check, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return False


def test_sigkill_mid_stream_then_restart_loses_and_doubles_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    events = sample_events(60_000)
    expected = reference_features(events)
    crash = flow_settings(settings, "crash", snapshot_interval_s=1)
    producer = threading.Thread(
        target=produce_events, args=(crash, events), kwargs={"rate": 10_000}
    )
    flow = flow_process(crash, log=tmp_path / "first.log")
    producer.start()
    try:
        reached = wait_until(lambda: count_sessions(crash) >= 0.3 * len(expected), 60)
        assert reached, (tmp_path / "first.log").read_text()[-2000:]
        flow.send_signal(signal.SIGKILL)
        assert flow.wait(10) == -signal.SIGKILL
        assert count_sessions(crash) < 0.8 * len(expected), "the kill was not mid-stream"
    finally:
        flow.kill()
        producer.join(60)

    restart = crash.model_copy(update={"flow": crash.flow.model_copy(update={"stop_at_end": True})})
    second = flow_process(restart, log=tmp_path / "second.log")
    assert second.wait(FLOW_TIMEOUT_S) == 0, (tmp_path / "second.log").read_text()[-2000:]

    crash_state = read_state(crash)
    assert decoded(crash_state) == expected

    expected_ids = expected_example_ids(events)
    seen = example_ids(crash, expected_ids)
    assert seen.keys() == expected_ids, "an example was lost (duplicates are allowed)"

    straight = flow_settings(settings, "straight")
    straight = straight.model_copy(update={"kafka": crash.kafka})  # same input topics
    run_flow_in_process(straight)
    assert read_state(straight) == crash_state
    assert_popular_close(read_popular(crash), read_popular(straight))
