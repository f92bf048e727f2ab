"""Runs the loop's long-lived processes and keeps them running.

``streamrec up`` starts the flow, the learner, the drift monitor and serving as child
processes, restarts one that dies (with exponential backoff, so a crash loop does not
spin), and stops them all on Ctrl-C or SIGTERM: SIGTERM first, SIGKILL after a grace
period. Scaling past one machine is done by the platform (Kafka partitions, Bytewax
processes, serving replicas), not here: this is the single-machine supervisor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streamrec.structured_log import log_event

logger = logging.getLogger("streamrec.supervisor")

MAX_BACKOFF_S = 30.0


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One supervised process: a name, its command line and extra environment."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


def streamrec_command(*args: str) -> tuple[str, ...]:
    """The command line running a ``streamrec`` subcommand with this interpreter."""
    return (sys.executable, "-m", "cli", *args)


@dataclass(slots=True)
class _Child:
    spec: ProcessSpec
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0


class Supervisor:
    """Start, watch and stop a fixed set of processes."""

    def __init__(self, specs: list[ProcessSpec], log_dir: Path, grace_s: float = 10.0) -> None:
        self._children = [_Child(spec) for spec in specs]
        self._log_dir = log_dir
        self._grace_s = grace_s
        self._stopping = threading.Event()
        log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def restarts(self) -> dict[str, int]:
        return {child.spec.name: child.restarts for child in self._children}

    def pids(self) -> dict[str, int | None]:
        """The pid of each process's latest start (None before the first)."""
        return {
            child.spec.name: child.process.pid if child.process else None
            for child in self._children
        }

    def running(self) -> dict[str, bool]:
        return {
            child.spec.name: child.process is not None and child.process.poll() is None
            for child in self._children
        }

    def start(self) -> None:
        for child in self._children:
            self._spawn(child)

    def _spawn(self, child: _Child) -> None:
        log = open(self._log_dir / f"{child.spec.name}.log", "ab")  # noqa: SIM115 - child owns it
        child.process = subprocess.Popen(
            child.spec.argv,
            env=os.environ | dict(child.spec.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        child.started_at = time.monotonic()
        log_event(logger, "process_started", name=child.spec.name, pid=child.process.pid)

    def check(self) -> None:
        """Restart any child that exited; call periodically."""
        now = time.monotonic()
        for child in self._children:
            if self._stopping.is_set() or child.process is None:
                continue
            code = child.process.poll()
            if code is None:
                continue
            if child.next_start == 0.0:
                # A process that ran for a while before dying starts again from a short backoff.
                ran_s = now - child.started_at
                backoff = 1.0 if ran_s > MAX_BACKOFF_S else min(MAX_BACKOFF_S, 2.0**child.restarts)
                child.next_start = now + backoff
                log_event(
                    logger,
                    "process_exited",
                    logging.WARNING,
                    name=child.spec.name,
                    code=code,
                    restart_in_s=backoff,
                )
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                self._spawn(child)

    def kill(self, name: str) -> int:
        """SIGKILL the process ``name`` (a crash, for fault runs); ``check`` restarts it.

        Returns the pid that was killed.
        """
        for child in self._children:
            if child.spec.name == name and child.process and child.process.poll() is None:
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait()
                log_event(logger, "process_killed", name=name, pid=child.process.pid)
                return child.process.pid
        raise LookupError(f"no running process named {name!r}")

    def run_until_stopped(self, poll_s: float = 0.5) -> None:
        """Supervise until ``stop`` is called (or SIGINT/SIGTERM in the main thread)."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: self._stopping.set())
        self.start()
        while not self._stopping.wait(poll_s):
            self.check()
        self.stop_all()

    def stop(self) -> None:
        self._stopping.set()

    def stop_all(self) -> None:
        """SIGTERM every child, then SIGKILL what is still alive after the grace period."""
        self._stopping.set()
        alive = [c.process for c in self._children if c.process and c.process.poll() is None]
        for process in alive:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + self._grace_s
        for process in alive:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        log_event(logger, "processes_stopped", count=len(alive))


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
