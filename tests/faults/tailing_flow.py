"""A ``streamrec flow`` process that tails its topics, for the flow's fault tests.

The flow runs as its own process (as in production: a fault that kills it shows as an exit,
not as a failed test thread), and every wait is a poll with a deadline that also fails fast,
with the flow's log, when the flow exits while it should keep running.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from streamrec.alerts import Alert, decode_alert
from streamrec.settings import KafkaSettings, Settings
from streamrec.topics import Topics
from tests.integration.test_feature_flow import flow_env
from tests.kafka_reading import read_topic

WAIT_S = 60.0


def start_flow(settings: Settings, log: Path, **env: str) -> subprocess.Popen:
    """``streamrec flow`` with these settings (and extra ``STREAMREC_*`` variables)."""
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "flow"],
        env=flow_env(settings) | env,
        stdout=out,
        stderr=out,
    )


def stop_flow(flow: subprocess.Popen) -> None:
    if flow.poll() is None:
        flow.terminate()
        try:
            flow.wait(10)
        except subprocess.TimeoutExpired:
            flow.kill()
            flow.wait(10)


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def wait_while_running(
    flow: subprocess.Popen, log: Path, check: Callable[[], bool], what: str
) -> None:
    """Poll ``check`` until true; fail at the deadline, or at once if the flow exits."""
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert flow.poll() is None, f"the flow exited ({flow.returncode}):\n{log_tail(log)}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log_tail(log)}"
        time.sleep(0.2)


def flow_alerts(kafka: KafkaSettings, expected: int, timeout_s: float = 10.0) -> list[Alert]:
    """The alerts on the alerts topic (read until ``expected`` or the deadline)."""
    topic = Topics.from_settings(kafka).alerts
    return [decode_alert(m.value()) for m in read_topic(kafka, topic, expected, timeout_s)]
