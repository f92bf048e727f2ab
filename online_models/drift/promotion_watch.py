"""After a fine-tune is promoted, whether it holds up on live traffic.

The gate promotes a candidate that beat the serving model on held-out examples; live
traffic can still disagree. ``PromotionWatch`` takes hit@20 of the previous lineage just
before the promotion (the monitor's recent level), then scores the first ``window``
examples the promoted lineage ranks (learner signals of a version at or above the promoted
one). Below the level before by more than ``margin``: ``Regressed``, and the drift loop
restores the previous version (``streamrec model rollback``'s code, when
``STREAMREC_DRIFT_AUTO_ROLLBACK`` is on). Otherwise it held, and the watch ends.

Pure: observations in, a verdict out.

>>> watch = PromotionWatch(window=4, margin=0.05)
>>> watch.start(version=7, level_before=0.5)
>>> [watch.observe(0.0, version=6) for _ in range(4)]  # the old lineage: not counted
[None, None, None, None]
>>> [watch.observe(0.25, version=7) for _ in range(4)][-1]
Regressed(version=7, level_before=0.5, level_after=0.25)
>>> watch.watching
False
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Regressed:
    """The promoted ``version`` scored ``level_after`` live, against ``level_before``."""

    version: int
    level_before: float
    level_after: float


class PromotionWatch:
    def __init__(self, window: int, margin: float) -> None:
        self.window = window
        self.margin = margin
        self._version: int | None = None
        self._before = 0.0
        self._sum = 0.0
        self._count = 0

    @property
    def watching(self) -> bool:
        return self._version is not None

    def start(self, version: int, level_before: float) -> None:
        """``version`` was just promoted; the previous lineage was at ``level_before``."""
        self._version, self._before = version, level_before
        self._sum, self._count = 0.0, 0

    def observe(self, value: float, version: int) -> Regressed | None:
        """One example's hit@20 (0..1) as ranked by model ``version``."""
        watched = self._version
        if watched is None or version < watched:
            return None
        self._sum += value
        self._count += 1
        if self._count < self.window:
            return None
        self._version = None
        level = self._sum / self._count
        if level < self._before - self.margin:
            return Regressed(watched, self._before, level)
        return None
