"""Starting the loop for a demo or a load test, and its first model.

``running_loop`` runs the loop's processes under the supervisor for the duration of a
``with`` block (restarting what crashes) and returns once every stage has started: serving
answers ``/readyz``, the flow and the drift monitor answer on their metrics ports, and the
learner reports the version it continues from. A load test that sent traffic before that
would measure the processes' start-up (importing torch on a busy machine takes tens of
seconds), not the loop.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson

from loadtest.prometheus_scrape import scrape
from streamrec.local_services import free_port, wait_for
from streamrec.loop_processes import MetricsEndpoints, loop_specs
from streamrec.process_supervisor import Supervisor, streamrec_command
from streamrec.settings import Settings


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - local
            return response.status == 200
    except OSError:
        return False


def _started(url: str, gauge: str | None = None) -> bool:
    """The endpoint answers (and ``gauge``, when given, is set above 0)."""
    metrics = scrape(url, timeout_s=1.0)
    return metrics is not None and (gauge is None or metrics.value(gauge) > 0)


def wait_started(settings: Settings, timeout_s: float) -> None:
    """Until every stage of the loop has started (see the module docstring)."""
    serving = settings.serving
    wait_for(lambda: _ready(f"http://{serving.host}:{serving.port}/readyz"), timeout_s, "serving")
    endpoints = MetricsEndpoints.from_settings(settings)
    stages = [
        (endpoints.flow, None, "the flow"),
        (endpoints.learner, "streamrec_learner_model_version", "the learner"),
        (endpoints.drift, None, "the drift monitor"),
    ]
    for url, gauge, what in stages:
        if url is not None:
            wait_for(lambda url=url, gauge=gauge: _started(url, gauge), timeout_s, what, 0.2)


def isolated_environment(label: str, run_dir: Path) -> dict[str, str]:
    """Environment giving a run its own topics, Redis keys, directories and free ports.

    The demo and the fault run use it so that they share nothing with a loop already
    running on this machine (and clean up only what is theirs).
    """
    return {
        "STREAMREC_TOPIC_PREFIX": f"{label}-",
        "STREAMREC_KEY_PREFIX": f"streamrec-{label}",
        "STREAMREC_MODEL_STORE_DIR": str(run_dir / "models"),
        "STREAMREC_FLOW_RECOVERY_DIR": str(run_dir / "recovery"),
        "STREAMREC_SERVING_PORT": str(free_port()),
        "STREAMREC_FLOW_METRICS_PORT": str(free_port()),
        "STREAMREC_LEARNER_METRICS_PORT": str(free_port()),
        "STREAMREC_DRIFT_METRICS_PORT": str(free_port()),
    }


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
    """The loop's processes under a supervisor until the block exits; waits until started."""
    supervisor = Supervisor(loop_specs(settings), log_dir)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            supervisor.check()

    supervisor.start()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        wait_started(settings, ready_timeout_s)
        yield supervisor
    finally:
        stop.set()
        supervisor.stop_all()
