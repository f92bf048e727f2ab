"""Drift detectors on the live signals: river detectors with warm-up, spacing and direction.

Each ``GuardedDetector`` wraps one river detector (ADWIN or Page-Hinkley) on one scalar
signal and decides whether a change is worth an alert:

- during the first ``warmup`` observations nothing is reported (the model is still learning
  and every level moves);
- a change in the harmless direction (hit@20 going *up*, the loss going *down*) is absorbed
  silently: the reference level moves on, nobody is paged;
- two reports from one detector are at least ``min_spacing`` observations apart.

Positions count observations of the detector's own signal (examples for per-example
signals, impressions for the CTR), so a detection says exactly where in the stream it fired.
Everything here is pure: no Kafka, Redis or clock.

>>> spec = DetectorSpec("hit_rate", "hit@20", "adwin", 0.002, "down")
>>> detector = GuardedDetector(spec, warmup=100, min_spacing=0)
>>> stream = [float(i % 2) for i in range(3000)] + [0.0] * 500
>>> first = next(d for d in map(detector.update, stream) if d is not None)
>>> 3000 < first.position < 3200, round(first.level_before, 1), first.level_after < 0.3
(True, 0.5, True)
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from river.drift import ADWIN, PageHinkley

from streamrec.settings import DriftSettings

AFTER_VALUES = 64

Direction = Literal["up", "down", "both"]
DetectorKind = Literal["adwin", "page_hinkley"]


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """What one detector watches and how sensitive it is.

    ``sensitivity`` is ADWIN's ``delta`` (smaller: fewer false alarms, later detection) or
    Page-Hinkley's ``threshold`` (larger: the same). ``direction`` is the harmful one.
    """

    name: str
    signal: str
    kind: DetectorKind
    sensitivity: float
    direction: Direction
    ph_delta: float = 0.005
    ph_min_instances: int = 30
    level_window: int = 500


@dataclass(frozen=True, slots=True)
class Detection:
    """A reportable change: where it fired and the signal's level before and after."""

    detector: str
    signal: str
    position: int
    level_before: float
    level_after: float


class GuardedDetector:
    """One river detector plus the rules that turn its raw detections into reports."""

    def __init__(self, spec: DetectorSpec, warmup: int, min_spacing: int) -> None:
        self.spec = spec
        self.warmup = warmup
        self.min_spacing = min_spacing
        self.position = 0
        self.raw_detections = 0
        self.suppressed = 0
        self._last_report: int | None = None
        self._detector = _make_river_detector(spec)
        self._reference_sum = 0.0
        self._reference_count = 0
        self._recent: deque[float] = deque(maxlen=spec.level_window)
        self._recent_sum = 0.0

    @property
    def level(self) -> float:
        """The signal's recent level (mean of the last ``level_window`` observations)."""
        return self._recent_sum / len(self._recent) if self._recent else math.nan

    def update(self, value: float) -> Detection | None:
        """Feed one observation; return a ``Detection`` when an alert is due."""
        before_width, before_mean = self._adwin_window()
        self._detector.update(value)
        self.position += 1
        self._track_levels(value)
        if not self._detector.drift_detected:
            return None
        self.raw_detections += 1
        level_before, level_after = self._levels_at_change(before_width, before_mean)
        self._reference_sum = 0.0
        self._reference_count = 0
        if not self._is_harmful(level_before, level_after):
            return None
        if self.position <= self.warmup or (
            self._last_report is not None and self.position - self._last_report < self.min_spacing
        ):
            self.suppressed += 1
            return None
        self._last_report = self.position
        return Detection(self.spec.name, self.spec.signal, self.position, level_before, level_after)

    def _track_levels(self, value: float) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_sum -= self._recent[0]
        self._recent.append(value)
        self._recent_sum += value
        self._reference_sum += value
        self._reference_count += 1

    def _adwin_window(self) -> tuple[float, float]:
        if isinstance(self._detector, ADWIN):
            return float(self._detector.width), float(self._detector.estimation)
        return 0.0, 0.0

    def _levels_at_change(self, before_width: float, before_mean: float) -> tuple[float, float]:
        """Levels either side of the change.

        ADWIN: before is the mean of the sub-window it dropped (exact); after is the mean of
        the last ``AFTER_VALUES`` observations: ADWIN cuts conservatively, so the window it
        keeps still holds many values from before the change. Page-Hinkley: the mean since
        the last detection vs the recent level.
        """
        if isinstance(self._detector, ADWIN):
            after_width = float(self._detector.width)
            dropped = before_width + 1 - after_width
            if dropped > 0:
                total = before_width * before_mean + self._recent[-1]
                kept_total = after_width * float(self._detector.estimation)
                newest = min(len(self._recent), AFTER_VALUES)
                after = sum(itertools.islice(reversed(self._recent), newest)) / newest
                return (total - kept_total) / dropped, after
        reference = (
            self._reference_sum / self._reference_count if self._reference_count else math.nan
        )
        return reference, self.level

    def _is_harmful(self, before: float, after: float) -> bool:
        if self.spec.direction == "both" or math.isnan(before) or math.isnan(after):
            return True
        return after < before if self.spec.direction == "down" else after > before


def _make_river_detector(spec: DetectorSpec) -> ADWIN | PageHinkley:
    if spec.kind == "adwin":
        return ADWIN(delta=spec.sensitivity)
    mode = {"up": "up", "down": "down", "both": "both"}[spec.direction]
    return PageHinkley(
        min_instances=spec.ph_min_instances,
        delta=spec.ph_delta,
        threshold=spec.sensitivity,
        mode=mode,
    )


DETECTOR_NAMES = ("hit_rate", "loss", "category_share", "new_items", "session_length", "ctr")


def detector_specs(settings: DriftSettings) -> dict[str, DetectorSpec]:
    """The configured detectors by name (``settings.detectors`` picks which run)."""
    every = {
        "hit_rate": DetectorSpec("hit_rate", "hit@20", "adwin", settings.adwin_delta, "down"),
        "loss": DetectorSpec(
            "loss",
            "mean_loss",
            "page_hinkley",
            settings.ph_threshold,
            "up",
            ph_delta=settings.ph_delta,
            ph_min_instances=settings.ph_min_instances,
            level_window=20,
        ),
        "category_share": DetectorSpec(
            "category_share", "reference_category_share", "adwin", settings.input_delta, "both"
        ),
        "new_items": DetectorSpec(
            "new_items", "never_seen_item_share", "adwin", settings.new_items_delta, "up"
        ),
        "session_length": DetectorSpec(
            "session_length", "ended_session_length", "adwin", settings.input_delta, "both"
        ),
        "ctr": DetectorSpec("ctr", "recommended_ctr", "adwin", settings.ctr_delta, "down"),
    }
    wanted = [name.strip() for name in settings.detectors.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(every))
    if unknown:
        raise ValueError(f"unknown drift detectors {unknown}; known: {list(DETECTOR_NAMES)}")
    return {name: every[name] for name in wanted}
