"""The supervisor restarts a crashed process and stops everything it started."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from streamrec.process_supervisor import ProcessSpec, Supervisor


def poll_until(check, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_crashed_process_is_restarted_and_all_are_stopped(tmp_path: Path) -> None:
    marker = tmp_path / "starts"
    crasher = (
        f"import pathlib; p = pathlib.Path({str(marker)!r}); "
        "p.write_text(p.read_text() + 'x' if p.exists() else 'x'); raise SystemExit(3)"
    )
    sleeper = "import time; time.sleep(600)"
    supervisor = Supervisor(
        [
            ProcessSpec("crasher", (sys.executable, "-c", crasher)),
            ProcessSpec("sleeper", (sys.executable, "-c", sleeper)),
        ],
        tmp_path / "logs",
        grace_s=5,
    )
    runner = threading.Thread(target=supervisor.run_until_stopped, kwargs={"poll_s": 0.05})
    runner.start()
    try:
        assert poll_until(lambda: marker.exists() and len(marker.read_text()) >= 2)
        assert supervisor.restarts["crasher"] >= 1
        assert supervisor.running()["sleeper"]
    finally:
        supervisor.stop()
        runner.join(20)
    assert not runner.is_alive()
    assert supervisor.running() == {"crasher": False, "sleeper": False}
    assert (tmp_path / "logs" / "sleeper.log").exists()


def test_a_killed_process_is_restarted_with_a_new_pid(tmp_path: Path) -> None:
    sleeper = "import time; time.sleep(600)"
    supervisor = Supervisor(
        [ProcessSpec("sleeper", (sys.executable, "-c", sleeper))], tmp_path / "logs", grace_s=5
    )
    runner = threading.Thread(target=supervisor.run_until_stopped, kwargs={"poll_s": 0.05})
    runner.start()
    try:
        assert poll_until(lambda: supervisor.running()["sleeper"])
        killed = supervisor.kill("sleeper")
        assert poll_until(lambda: supervisor.restarts["sleeper"] == 1)
        assert poll_until(lambda: supervisor.running()["sleeper"])
        assert killed not in supervisor.pids().values()
    finally:
        supervisor.stop()
        runner.join(20)
    assert supervisor.running() == {"sleeper": False}
