"""A failure inside the flow is logged once, as a Python error, before Bytewax sees it."""

from __future__ import annotations

import logging

import pytest

from flows.failure_log import closes_quietly, log_failure, logs_failure


class Step:
    def __init__(self) -> None:
        self.closed = False

    @logs_failure
    def write(self, value: int) -> int:
        if value < 0:
            raise ValueError(f"negative value {value}")
        return value

    @logs_failure
    def outer(self) -> None:
        self.write(-1)

    @logs_failure
    def done(self) -> None:
        raise StopIteration

    @closes_quietly
    def close(self) -> None:
        self.closed = True
        raise RuntimeError("flush failed")


def failures(caplog: pytest.LogCaptureFixture, event: str) -> list[dict]:
    return [r.fields for r in caplog.records if r.getMessage() == event]  # type: ignore[attr-defined]


def test_an_exception_is_logged_with_type_message_and_traceback_then_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    assert Step().write(3) == 3
    with pytest.raises(ValueError, match="negative value -2"):
        Step().write(-2)
    [line] = failures(caplog, "flow_failed")
    assert (line["where"], line["error"], line["message"]) == (
        "Step.write", "ValueError", "negative value -2",
    )  # fmt: skip
    assert 'raise ValueError(f"negative value {value}")' in line["traceback"]


def test_an_exception_crossing_several_wrapped_calls_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ValueError):
        Step().outer()
    assert [line["where"] for line in failures(caplog, "flow_failed")] == ["Step.write"]


def test_a_later_exception_raised_from_a_logged_one_is_not_logged_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cause = ConnectionError("redis down")
    try:
        raise RuntimeError("a background write failed") from cause
    except RuntimeError as first:
        log_failure("flow_failed", "write", first)
    try:
        raise RuntimeError("a background write failed") from cause
    except RuntimeError as second:
        log_failure("flow_failed", "snapshot", second)
    assert [line["where"] for line in failures(caplog, "flow_failed")] == ["write"]


def test_the_end_of_a_source_is_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(StopIteration):
        Step().done()
    assert not failures(caplog, "flow_failed")


def test_close_never_raises_and_says_why_it_failed(caplog: pytest.LogCaptureFixture) -> None:
    step = Step()
    step.close()
    assert step.closed
    [line] = failures(caplog, "flow_close_failed")
    assert (line["error"], line["message"]) == ("RuntimeError", "flush failed")
