"""The flow's background writer: in order, drained on demand, failures surface."""

from __future__ import annotations

import threading

import pytest

from flows.background_writer import BackgroundWriter


def test_jobs_run_in_submission_order_and_drain_waits_for_all() -> None:
    writer = BackgroundWriter("test", max_pending=2)
    done: list[int] = []
    gate = threading.Event()
    writer.submit(lambda: gate.wait(5))
    for index in range(10):
        if index == 1:
            gate.set()
        writer.submit(lambda index=index: done.append(index))
    writer.drain()
    assert done == list(range(10))


def test_a_failed_write_stops_the_flow_and_later_jobs_do_not_run() -> None:
    writer = BackgroundWriter("test")
    ran: list[str] = []

    def fail() -> None:
        raise ConnectionError("redis down")

    writer.submit(fail)
    with pytest.raises(RuntimeError, match="background write failed"):
        writer.drain()
    with pytest.raises(RuntimeError):
        writer.submit(lambda: ran.append("after"))
    assert ran == []
