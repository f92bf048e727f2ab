"""`streamrec replay` whose broker dies mid-replay: a summary, one reason, exit 1, no traceback.

The broker is the test's own (the session-wide one is never stopped); it is killed
with SIGKILL once the replay's first events have been read back from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streamrec.kafka_clients import ensure_topics
from streamrec.topics import Topics
from tests.conftest import SAMPLE_DIR
from tests.kafka_reading import read_topic
from tests.private_services import PrivateBroker

pytestmark = pytest.mark.faults


def test_replay_reports_what_was_acknowledged_when_the_broker_dies(
    private_broker: PrivateBroker, tmp_path: Path
) -> None:
    kafka = private_broker.kafka.model_copy(update={"partitions": 2})
    topics = Topics.from_settings(kafka)
    ensure_topics(kafka, topics.all())
    env = dict(os.environ) | {
        "STREAMREC_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "STREAMREC_DATA_DIR": str(SAMPLE_DIR),
        "STREAMREC_STATE_DIR": str(tmp_path / "state"),
    }
    # 5000 events/s: the sample would take about a minute, so the kill lands mid-replay.
    replay = subprocess.Popen(
        [sys.executable, "-m", "cli", "replay", "--rate", "5000"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert len(read_topic(kafka, topics.clicks, 1000, timeout_s=30)) >= 1000
        private_broker.kill()
        out, err = replay.communicate(timeout=30)
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.communicate()

    assert replay.returncode == 1, err
    assert "Traceback" not in err
    summary = orjson.loads(out.strip().splitlines()[-1])
    assert summary["produced"] >= 1000
    assert summary["sent"] == summary["produced"] + summary["delivery_errors"]
    assert summary["sent"] < 100_000  # stopped, did not push the rest into the void
    assert "brokers are down" in summary["error"] or "FATAL" in summary["error"]
    reason = err.strip().splitlines()[-1]
    assert reason.startswith("replay stopped: ") and summary["error"] in reason
    assert f"{summary['produced']:,} of {summary['sent']:,} events acknowledged" in reason
