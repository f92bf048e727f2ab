"""The drift monitor's decisions on learner signals, examples and impressions (pure)."""

from __future__ import annotations

import numpy as np

from online_models.drift.monitor import DriftMonitor, wants_finetune
from online_models.learner.signal import LearnerSignal
from streamrec.alerts import Severity
from streamrec.settings import DriftSettings, KafkaSettings, LearnerSettings, Settings
from streamrec.training_examples import TrainingExample


def monitor(**drift: object) -> DriftMonitor:
    return DriftMonitor(
        Settings(
            kafka=KafkaSettings(topic_prefix="p-"),
            drift=DriftSettings(**drift),
            learner=LearnerSettings(batch_size=100),
        )
    )


def batches(
    rng: np.random.Generator, rate: float, count: int, version: int, start: int, minutes: int = 0
):
    """``count`` micro-batches of 100 examples at hit@20 ``rate``; with ``minutes``, one
    batch per event-time minute, from minute ``start // 100``."""
    for index in range(count):
        hits = int(rng.binomial(100, rate))
        ts_ms = (start // 100 + index) * 60_000 if minutes else 0
        yield LearnerSignal(
            version, 100, hits, hits * 0.3, 6.0 + rng.normal(0, 0.05),
            start + index * 100, start + index * 100 + 99, ts_ms,
        )  # fmt: skip


def test_hit_rate_drop_raises_one_warning_with_version_and_offsets() -> None:
    rng = np.random.default_rng(0)
    drift = monitor()
    alerts = []
    for signal in batches(rng, 0.45, 200, 3, 0):
        alerts += drift.on_learner_signal(signal)
    assert alerts == []
    for signal in batches(rng, 0.1, 30, 4, 20_000):
        alerts += drift.on_learner_signal(signal)
    (alert,) = [a for a in alerts if a.detector == "hit_rate"]
    assert alert.severity is Severity.WARNING and alert.model_version == 4
    assert 20_000 < alert.position <= 22_000
    assert alert.offsets[0].topic == "p-clicks" and alert.offsets[0].offset >= 20_000
    assert alert.level_before > 0.35 and alert.level_after < 0.3
    assert wants_finetune(alert, enabled=True) and not wants_finetune(alert, enabled=False)


def test_a_drop_that_does_not_heal_pages_once_and_one_that_heals_never_pages() -> None:
    rng = np.random.default_rng(1)
    stays_low = monitor(page_after_s=30 * 60, recovery_window=500)
    alerts = []
    for signal in batches(rng, 0.45, 200, 3, 0, minutes=1):
        alerts += stays_low.on_learner_signal(signal)
    for signal in batches(rng, 0.1, 90, 4, 20_000, minutes=1):
        alerts += stays_low.on_learner_signal(signal)
    assert [a.detector for a in alerts] == ["hit_rate", "quality_not_recovered"]
    drop, page = alerts
    assert drop.severity is Severity.WARNING and page.severity is Severity.CRITICAL
    assert page.level_before == drop.level_before and page.level_after < 0.2
    minutes_after_drop = (page.position - drop.position) / 100
    assert 29 <= minutes_after_drop <= 40  # one batch per minute, each at its own ts
    assert not wants_finetune(page, enabled=True)

    heals = monitor(page_after_s=30 * 60, recovery_window=500)
    alerts = []
    for signal in batches(rng, 0.45, 200, 3, 0, minutes=1):
        alerts += heals.on_learner_signal(signal)
    for signal in batches(rng, 0.1, 20, 4, 20_000, minutes=1):
        alerts += heals.on_learner_signal(signal)
    for signal in batches(rng, 0.45, 100, 5, 22_000, minutes=1):
        alerts += heals.on_learner_signal(signal)
    assert [a.detector for a in alerts] == ["hit_rate"]


def test_category_shift_and_new_items_raise_input_alerts() -> None:
    rng = np.random.default_rng(1)
    drift = monitor(warmup_examples=500)
    alerts = []
    for index in range(6000):
        category = str(int(rng.choice(3, p=[0.7, 0.2, 0.1])))
        item = f"i{int(rng.integers(0, 50))}"
        example = TrainingExample(f"e{index}", "s", ("a",), item, index, category=category)
        alerts += drift.on_example(example, 0, index)
    assert alerts == []
    for index in range(6000, 9000):
        category = str(int(rng.choice(3, p=[0.1, 0.2, 0.7])))
        example = TrainingExample(f"e{index}", "s", ("a",), f"n{index}", index, category=category)
        alerts += drift.on_example(example, 0, index)
    detectors = {a.detector for a in alerts}
    assert {"category_share", "new_items"} <= detectors
    assert not wants_finetune(next(a for a in alerts if a.detector == "category_share"), True)


def test_ctr_drop_on_impressions_raises_an_alert() -> None:
    rng = np.random.default_rng(2)
    drift = monitor(warmup_examples=200, ctr_horizon=5)
    alerts = []
    for index in range(8000):
        rate = 0.3 if index < 4000 else 0.02
        items = (f"a{index}", f"b{index}")
        alerts += drift.on_impression(f"r{index}", items, 0, index)
        if rng.random() < rate:
            alerts += drift.on_click(f"r{index}", items[1])
    (alert,) = [a for a in alerts if a.detector == "ctr"]
    assert alert.level_after < alert.level_before
    assert alert.offsets[0].topic == "p-impressions"


def test_recovered_is_judged_on_quality_now_not_on_the_mean_since_the_alert() -> None:
    rng = np.random.default_rng(2)
    drift = monitor()
    alerts = []
    for signal in batches(rng, 0.45, 200, 3, 0):
        alerts += drift.on_learner_signal(signal)
    for signal in batches(rng, 0.1, 10, 4, 20_000):
        alerts += drift.on_learner_signal(signal)
    (alert,) = [a for a in alerts if a.detector == "hit_rate"]
    mark = drift.quality_mark(alert)
    for signal in batches(rng, 0.1, 10, 4, 21_000):
        drift.on_learner_signal(signal)
    assert not drift.recovered(mark) and drift.level_since(mark) < 0.2
    for signal in batches(rng, 0.45, 6, 5, 22_000):  # healed: 600 examples back at 0.45
        drift.on_learner_signal(signal)
    assert drift.level_since(mark) > 0.4  # the mean since the alert is still ~0.3
    assert drift.recovered(mark)
