"""The "due" rule of a drift fine-tune: wait for post-change examples, skip when healed."""

from __future__ import annotations

import doctest

import online_models.drift.finetune_schedule as finetune_schedule
from online_models.drift.finetune_schedule import FinetuneSchedule, skipped_alert
from online_models.drift.monitor import QualityMark
from streamrec.alerts import make_alert

ALERT = make_alert("hit_rate", "hit@20", 0.8, 0.3, 5000, 7)
MARK = QualityMark(reference=0.8, hits=4000.0, examples=5000)


def never(mark: QualityMark) -> bool:
    return False


def test_the_docstring_examples_hold() -> None:
    assert doctest.testmod(finetune_schedule).failed == 0


def test_due_once_enough_examples_arrived_since_the_alert() -> None:
    schedule = FinetuneSchedule(wait_examples=1000, wait_s=300.0, skip_recovered=True)
    assert schedule.schedule(ALERT, MARK, examples_seen=200, now_s=50.0)
    assert schedule.due(1199, 60.0, never) is None and schedule.pending is not None
    due = schedule.due(1200, 61.0, never)
    assert due is not None and due.alert is ALERT and not due.skip and due.scheduled_s == 50.0
    assert schedule.due(5000, 1000.0, never) is None  # handed over once


def test_due_after_the_wait_on_a_quiet_stream() -> None:
    schedule = FinetuneSchedule(wait_examples=1000, wait_s=300.0, skip_recovered=True)
    schedule.schedule(ALERT, MARK, examples_seen=0, now_s=0.0)
    assert schedule.due(10, 299.0, never) is None
    assert schedule.due(10, 300.0, never) is not None


def test_one_pending_at_a_time() -> None:
    schedule = FinetuneSchedule(wait_examples=10, wait_s=300.0, skip_recovered=True)
    later = make_alert("loss", "loss", 1.0, 2.0, 6000, 7)
    assert schedule.schedule(ALERT, MARK, 0, 0.0)
    assert not schedule.schedule(later, MARK, 5, 1.0)
    due = schedule.due(10, 2.0, never)
    assert due is not None and due.alert is ALERT


def test_skipped_when_the_learner_recovered_and_the_alert_says_why() -> None:
    schedule = FinetuneSchedule(wait_examples=10, wait_s=300.0, skip_recovered=True)
    seen: list[QualityMark] = []
    schedule.schedule(ALERT, MARK, 0, 0.0)
    due = schedule.due(10, 1.0, lambda mark: seen.append(mark) or True)
    assert due is not None and due.skip and seen == [MARK]
    alert = skipped_alert(due, level=0.78, position=9000, model_version=8)
    assert alert.detector == "finetune_skipped" and alert.severity == "info"
    assert ALERT.alert_id in alert.message and "recovered by itself" in alert.message
    assert alert.level_before == 0.8 and alert.level_after == 0.78


def test_never_skipped_when_skipping_is_off() -> None:
    schedule = FinetuneSchedule(wait_examples=10, wait_s=300.0, skip_recovered=False)
    schedule.schedule(ALERT, MARK, 0, 0.0)
    due = schedule.due(10, 1.0, lambda mark: True)
    assert due is not None and not due.skip
