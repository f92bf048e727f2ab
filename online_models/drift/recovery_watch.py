"""Whether quality came back by itself after a drop: the one drift condition that pages.

A drop of hit@20 (the ``hit_rate`` detector) is a warning: the online learner keeps
learning and a fine-tune may start; most drops heal without anyone. What a person must see
is a drop that did *not* heal: ``RecoveryWatch`` remembers the level before the drop and
keeps hit@20 over the last ``window`` examples since the drop; once ``page_after_ms`` has
passed since the drop (by the signals' clock: the learner's wall clock live, event time in
a replay) and that window is still below ``(1 - tolerance)`` times the level before, it
reports (once per drop; a new drop starts a new watch). A window back within the
tolerance ends the watch: healed.

Pure: observations and times in, a ``Stalled`` out.

>>> watch = RecoveryWatch(window=5, tolerance=0.1, page_after_ms=60_000)
>>> watch.dropped(level_before=0.5, ts_ms=0)
>>> results = [watch.observe(0.2, ts_ms=t * 1000) for t in range(0, 120, 20)]
>>> [result is not None for result in results]
[False, False, False, False, True, False]
>>> results[4]
Stalled(level_before=0.5, level_now=0.2, since_ms=0)
>>> watch.dropped(level_before=0.5, ts_ms=200_000)
>>> any(watch.observe(0.5, ts_ms=200_000 + t * 1000) for t in range(120))
False
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stalled:
    """Quality is still below the level before the drop, ``page_after_ms`` later."""

    level_before: float
    level_now: float
    since_ms: int


class RecoveryWatch:
    """Watches hit@20 after each drop; see the module docstring."""

    def __init__(self, window: int, tolerance: float, page_after_ms: int) -> None:
        self.tolerance = tolerance
        self.page_after_ms = page_after_ms
        self._recent: deque[float] = deque(maxlen=window)
        self._sum = 0.0
        self._before: float | None = None
        self._since_ms = 0

    @property
    def watching(self) -> bool:
        return self._before is not None

    def dropped(self, level_before: float, ts_ms: int) -> None:
        """A drop was detected at ``ts_ms`` from ``level_before``: watch what follows."""
        self._before = level_before
        self._since_ms = ts_ms
        self._recent.clear()
        self._sum = 0.0

    def observe(self, value: float, ts_ms: int) -> Stalled | None:
        """One example's hit@20 (0..1) at event time ``ts_ms``; a ``Stalled`` when due."""
        if self._before is None:
            return None
        recent = self._recent
        if len(recent) == recent.maxlen:
            self._sum -= recent[0]
        recent.append(value)
        self._sum += value
        before = self._before
        if len(recent) < (recent.maxlen or 1):
            return None
        level = self._sum / len(recent)
        if level >= (1 - self.tolerance) * before:
            self._before = None  # healed
            return None
        if ts_ms - self._since_ms < self.page_after_ms:
            return None
        self._before = None  # reported once
        return Stalled(before, level, self._since_ms)
