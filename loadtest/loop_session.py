"""Starting the loop for a demo or a load test, and its first model.

``running_loop`` runs the loop's processes under the supervisor for the duration of a
``with`` block (restarting what crashes) and returns once serving is ready.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson

from streamrec.local_services import wait_for
from streamrec.loop_processes import loop_specs
from streamrec.process_supervisor import Supervisor, streamrec_command
from streamrec.settings import Settings


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - local
            return response.status == 200
    except OSError:
        return False


def train_first_model(until: str, epochs: int) -> dict[str, object]:
    """``streamrec train`` on events before ``until``; its JSON report."""
    out = subprocess.run(
        streamrec_command("train", "--until", until, "--epochs", str(epochs)),
        check=True,
        stdout=subprocess.PIPE,
    )
    return orjson.loads(out.stdout.decode().strip().splitlines()[-1])


@contextlib.contextmanager
def running_loop(
    settings: Settings, log_dir: Path, ready_timeout_s: float = 180
) -> Iterator[Supervisor]:
    """The loop's processes under a supervisor until the block exits; waits for serving."""
    supervisor = Supervisor(loop_specs(settings), log_dir)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            supervisor.check()

    supervisor.start()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        serving = settings.serving
        wait_for(
            lambda: _ready(f"http://{serving.host}:{serving.port}/readyz"),
            ready_timeout_s,
            "serving",
        )
        yield supervisor
    finally:
        stop.set()
        supervisor.stop_all()
