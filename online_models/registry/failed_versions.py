"""Versions that did not load, and when a follower may try each again (pure, no I/O).

A follower of the registry's pointer (the learner) must not reload a broken version on
every turn: that loop re-read the same blobs hundreds of times a minute. It records each
failure here and tries the version again only after an exponentially growing wait (a blob
on a shared store that was not visible yet may load later), up to ``max_wait_s``.

>>> failures = FailedVersions(first_wait_s=1.0, max_wait_s=4.0)
>>> [failures.record(7, now_s=0.0) for _ in range(4)]
[1.0, 2.0, 4.0, 4.0]
>>> failures.due(7, now_s=3.9), failures.due(7, now_s=4.0), failures.due(8, now_s=0.0)
(False, True, False)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class _Failure:
    attempts: int
    retry_at_s: float


class FailedVersions:
    """Failed versions with their next retry time; remembers the last ``capacity``."""

    def __init__(self, first_wait_s: float = 1.0, max_wait_s: float = 300.0, capacity: int = 64):
        self.first_wait_s = first_wait_s
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        self._failures: OrderedDict[int, _Failure] = OrderedDict()

    def record(self, version: int, now_s: float) -> float:
        """``version`` failed to load at ``now_s``; returns the wait before the next try."""
        failure = self._failures.pop(version, None)
        attempts = 1 if failure is None else failure.attempts + 1
        wait_s = min(self.first_wait_s * 2 ** (attempts - 1), self.max_wait_s)
        self._failures[version] = _Failure(attempts, now_s + wait_s)
        while len(self._failures) > self.capacity:
            self._failures.popitem(last=False)
        return wait_s

    def attempts(self, version: int) -> int:
        """How many times ``version`` failed (0: never, or it loaded since)."""
        failure = self._failures.get(version)
        return 0 if failure is None else failure.attempts

    def due(self, version: int, now_s: float) -> bool:
        """Whether a failed ``version``'s wait is over (False for a version that never failed)."""
        failure = self._failures.get(version)
        return failure is not None and now_s >= failure.retry_at_s

    def forget(self, version: int) -> None:
        """``version`` loaded after all."""
        self._failures.pop(version, None)
