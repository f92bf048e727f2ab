"""Drift detectors: detection, direction, warm-up, spacing, false alarms (pure)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import online_models.drift.detectors as drift_detectors
from online_models.drift.detectors import DetectorSpec, GuardedDetector, detector_specs
from streamrec.settings import DriftSettings

HIT_RATE = DetectorSpec("hit_rate", "hit@20", "adwin", 0.002, "down")


def bernoulli(rng: np.random.Generator, p: float, n: int) -> list[float]:
    return (rng.random(n) < p).astype(float).tolist()


def first_report(detector: GuardedDetector, values: list[float]) -> int | None:
    for value in values:
        if detector.update(value) is not None:
            return detector.position
    return None


def test_module_examples_run() -> None:
    assert doctest.testmod(drift_detectors).failed == 0


def test_adwin_reports_a_hit_rate_drop_soon_after_it_happens() -> None:
    rng = np.random.default_rng(0)
    detector = GuardedDetector(HIT_RATE, warmup=1000, min_spacing=5000)
    position = first_report(detector, bernoulli(rng, 0.45, 20_000) + bernoulli(rng, 0.15, 5000))
    assert position is not None
    assert 20_000 < position <= 20_000 + 2000


def test_levels_before_and_after_describe_the_change() -> None:
    rng = np.random.default_rng(1)
    detector = GuardedDetector(HIT_RATE, warmup=0, min_spacing=0)
    detection = None
    for value in bernoulli(rng, 0.5, 10_000) + bernoulli(rng, 0.1, 3000):
        detection = detector.update(value) or detection
        if detection:
            break
    assert detection is not None
    assert detection.level_before == pytest.approx(0.5, abs=0.05)
    assert detection.level_after < 0.35


def test_a_rise_in_hit_rate_is_not_reported() -> None:
    rng = np.random.default_rng(2)
    detector = GuardedDetector(HIT_RATE, warmup=0, min_spacing=0)
    assert first_report(detector, bernoulli(rng, 0.1, 10_000) + bernoulli(rng, 0.6, 10_000)) is None
    assert detector.raw_detections >= 1


def test_warmup_holds_back_early_detections() -> None:
    rng = np.random.default_rng(3)
    detector = GuardedDetector(HIT_RATE, warmup=50_000, min_spacing=0)
    assert first_report(detector, bernoulli(rng, 0.6, 5000) + bernoulli(rng, 0.1, 5000)) is None
    assert detector.suppressed >= 1


def test_min_spacing_keeps_two_reports_apart() -> None:
    rng = np.random.default_rng(4)
    detector = GuardedDetector(HIT_RATE, warmup=0, min_spacing=100_000)
    values = []
    for p in (0.8, 0.5, 0.2, 0.05):
        values += bernoulli(rng, p, 5000)
    reports = [r for r in map(detector.update, values) if r is not None]
    assert len(reports) == 1


def test_page_hinkley_reports_a_loss_rise() -> None:
    spec = detector_specs(DriftSettings())["loss"]
    detector = GuardedDetector(spec, warmup=10, min_spacing=0)
    rng = np.random.default_rng(5)
    before = (5.0 + rng.normal(0, 0.1, 300)).tolist()
    after = (7.0 + rng.normal(0, 0.1, 300)).tolist()
    position = first_report(detector, before + after)
    assert position is not None and 300 < position < 400


def test_no_false_alarm_on_a_long_stationary_stream() -> None:
    rng = np.random.default_rng(6)
    detector = GuardedDetector(HIT_RATE, warmup=1000, min_spacing=5000)
    assert first_report(detector, bernoulli(rng, 0.35, 300_000)) is None


def test_unknown_detector_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown drift detectors"):
        detector_specs(DriftSettings(detectors="hit_rate,typo"))
    assert list(detector_specs(DriftSettings(detectors="loss, ctr"))) == ["loss", "ctr"]
