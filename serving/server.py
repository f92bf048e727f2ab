"""Running the app: granian with ``ServingSettings.workers`` worker processes.

granian (a Rust HTTP server) was chosen by measurement over uvicorn; see
docs/serving.md. Each worker imports ``serving.app:app_from_environment`` and builds its
own app from the environment (settings are read once per process), so every worker
follows the registry and logs impressions on its own; the parent only supervises.

A worker that dies (killed, out of memory) is respawned by the parent while the others
keep serving; without that, granian would stop the whole server.

Each worker learns its index (0 .. workers-1; a respawned worker keeps its predecessor's)
from ``STREAMREC_SERVING_WORKER_INDEX``, which the server sets in the worker before the app
factory runs: granian knows the index but does not hand it to the factory. Exploration
seeds its draws with it, so workers draw distinct but reproducible sequences.

Graceful shutdown: on SIGTERM or SIGINT granian stops accepting connections, lets the
workers finish in-flight requests, then runs the app's lifespan shutdown, which stops the
registry follower and flushes queued impressions to Kafka (up to ``shutdown_grace_s``).

A server never shares its port with another one: ``serve`` claims the port before
granian binds (``serving.port_claim``) and exits with status 1 and one log line when it
is taken.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, MutableMapping
from functools import partial
from pathlib import Path
from typing import Any

from serving.port_claim import PortInUseError, claim_port
from streamrec.settings import ServingSettings
from streamrec.structured_log import log_event

logger = logging.getLogger(__name__)

APP_FACTORY = "serving.app:app_from_environment"
WORKER_INDEX_ENV = "STREAMREC_SERVING_WORKER_INDEX"
# What the workers get unless the environment says otherwise. numpy asks the kernel for
# transparent huge pages for every large array; where the kernel compacts memory to find
# them at fault time (``defrag`` of ``madvise``), a 1M-item hot swap spent three times
# its CPU in the kernel (1.7 s against 0.5-0.57 s per version, docs/serving.md).
WORKER_ENV_DEFAULTS = {"NUMPY_MADVISE_HUGEPAGE": "0"}


def apply_worker_defaults(environ: MutableMapping[str, str]) -> None:
    """Set each of ``WORKER_ENV_DEFAULTS`` that ``environ`` does not set itself."""
    for name, value in WORKER_ENV_DEFAULTS.items():
        environ.setdefault(name, value)


def load_in_worker(index: int, load_app: Callable[[], Any]) -> Any:
    """Run in worker ``index``'s process: publish the index to its settings, then load."""
    os.environ[WORKER_INDEX_ENV] = str(index)
    return load_app()


def serve(settings: ServingSettings) -> None:
    """Serve until interrupted (blocks); exit with status 1 if the port is taken."""
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.server.mp import MPServer

    class Server(MPServer):
        """granian's process server, telling each worker its index (see module doc)."""

        # granian's (private) spawn hook, the one place that knows the index: granian is
        # pinned, and tests/integration/test_serving_api.py checks two workers' indexes.
        def _spawn_worker(self, idx: int, target: Any, callback_loader: Any) -> Any:
            return super()._spawn_worker(idx, target, partial(load_in_worker, idx, callback_loader))

    try:
        claim = claim_port(settings.host, settings.port)
    except PortInUseError as exc:
        log_event(
            logger, "serving_port_in_use", logging.ERROR, host=settings.host,
            port=settings.port, error=str(exc),
        )  # fmt: skip
        raise SystemExit(1) from None
    log_event(logger, "serving_started", port=settings.port, workers=settings.workers)
    apply_worker_defaults(os.environ)  # the workers are spawned: they inherit it
    Server(
        APP_FACTORY,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        loop=Loops.asyncio,
        http=HTTPModes.http1,
        websockets=False,
        backpressure=settings.backpressure,
        http1_settings=HTTP1Settings(header_read_timeout=10_000),
        factory=True,
        log_access=False,
        respawn_failed_workers=True,
        workers_kill_timeout=max(1, math.ceil(settings.shutdown_grace_s)),
    ).serve()
    if claim is not None:
        claim.close()


def spawn_server(
    env: dict[str, str], port: int, log_path: Path | None = None, timeout_s: float = 60.0
) -> subprocess.Popen:
    """Start ``streamrec serve`` in a child process and wait until ``/healthz`` answers.

    ``env`` is the child's whole environment (STREAMREC_* variables configure it); its
    logs go to ``log_path`` (default: this process's stderr). Used by the serving
    benchmark and the integration tests, which need a real server.
    """
    child_env = env | {"STREAMREC_SERVING_PORT": str(port)}
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve"],
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    if log is not None:
        log.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    stop_server(process)
    raise TimeoutError(f"server not answering on port {port} after {timeout_s}s")


def stop_server(process: subprocess.Popen, timeout_s: float = 15.0) -> int:
    """SIGTERM (graceful: in-flight requests finish, impressions flush), then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
