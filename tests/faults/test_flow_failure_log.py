"""A flow that fails says why in its log, as a Python error, and exits instead of aborting.

Before: Redis unreachable made the publisher's write fail; Bytewax turned the exception into a
panic, the publisher's ``close`` (called from a destructor while unwinding) failed again, and
the process aborted (SIGABRT) with only ``Box<dyn Any>`` in its log.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streamrec.local_services import free_port
from streamrec.settings import Settings
from tests.faults.tailing_flow import log_tail, start_flow, stop_flow
from tests.integration.test_feature_flow import flow_settings, produce_events
from tests.unit.flows.test_shard import sample_events

pytestmark = pytest.mark.faults


def json_lines(log: Path) -> list[dict]:
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(orjson.loads(line))
    return lines


def test_a_failing_write_is_logged_with_its_python_error_and_the_flow_exits(
    settings: Settings, tmp_path: Path
) -> None:
    failing = flow_settings(settings, "no-redis")
    produce_events(failing, sample_events(2000))
    log = tmp_path / "flow.log"
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: every write fails
    flow = start_flow(failing, log, STREAMREC_REDIS_URL=nobody)
    try:
        returncode = flow.wait(60)
    finally:
        stop_flow(flow)

    assert returncode == 1, f"aborted instead of exiting ({returncode}):\n{log_tail(log)}"
    failures = [line for line in json_lines(log) if line["event"] == "flow_failed"]
    assert failures, f"no flow_failed line:\n{log_tail(log)}"
    first = failures[0]
    assert first["level"] == "error"
    # the next write, or the snapshot before it (whichever comes first), finds the failure
    assert first["where"] in ("_PublishPartition.write_batch", "_PublishPartition.snapshot")
    assert (first["error"], first["message"]) == ("RuntimeError", "a background write failed")
    assert "redis.exceptions.ConnectionError" in first["traceback"]
    assert len(failures) == 1, "logged once, not again by every call it passed through"
