"""Say why the flow failed, in Python terms, before Bytewax turns the error into a panic.

Bytewax runs the flow's Python code from Rust. An exception there becomes a Rust panic that
unwinds the worker, and while unwinding Bytewax calls every output partition's ``close``
from a destructor. When that ``close`` raises too (the publisher's flush fails for the same
reason the write did), it is a panic during a panic: the process aborts (SIGABRT) having
printed only ``Box<dyn Any>``, and the Python exception that started it is never shown.

Two rules fix that, applied to every method Bytewax calls on the flow's objects:

- ``logs_failure``: an exception is logged where it happens (one structured line,
  ``flow_failed``, with where, the exception type, its message and the traceback), then
  raised on unchanged, so the flow still stops and restarts from its last snapshot;
- ``closes_quietly``: ``close`` never raises; it logs instead (``flow_close_failed``).
  Nothing is lost by that: a committed epoch was flushed by its snapshot, and whatever a
  failed ``close`` still held belongs to an epoch the restart replays.

An exception is logged once: not again where it passes another wrapped call, nor when it
comes back as the cause of a later one (the runner logs what Bytewax finally raises only
when no line was written for it yet: errors of Bytewax's own).
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from streamrec.structured_log import log_event

logger = logging.getLogger("streamrec.flow")

P = ParamSpec("P")
R = TypeVar("R")


def logs_failure(method: Callable[P, R]) -> Callable[P, R]:
    """``method``, logging any exception (once, however many wrapped calls it crosses)."""

    @functools.wraps(method)
    def logged(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except StopIteration:  # how a source partition says it is done
            raise
        except Exception as exc:
            log_failure("flow_failed", method.__qualname__, exc)
            raise

    return logged


def closes_quietly(close: Callable[P, None]) -> Callable[P, None]:
    """``close``, logging instead of raising (it may run while the flow unwinds)."""

    @functools.wraps(close)
    def quiet(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            close(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - raising here would abort the process
            log_failure("flow_close_failed", close.__qualname__, exc)

    return quiet


def log_failure(event: str, where: str, exc: BaseException) -> None:
    """One error line with the exception's type, message and traceback (causes included),
    unless this exception, or one it was raised from, was logged already."""
    if _logged(exc):
        return
    log_event(
        logger,
        event,
        logging.ERROR,
        where=where,
        error=type(exc).__name__,
        message=str(exc),
        traceback="".join(traceback.format_exception(exc)),
    )
    for link in _chain(exc):
        link._streamrec_logged = True  # type: ignore[attr-defined]


def _logged(exc: BaseException) -> bool:
    return any(getattr(link, "_streamrec_logged", False) for link in _chain(exc))


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and what it was raised from or during, innermost last (cycles cut)."""
    links: list[BaseException] = []
    while exc is not None and all(exc is not link for link in links):
        links.append(exc)
        exc = exc.__cause__ or exc.__context__
    return links
