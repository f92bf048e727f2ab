"""When a drift alert's fine-tune runs, or why it does not run: the "due" rule (pure).

A triggering alert schedules a fine-tune (one at a time). Right after a change almost every
example is from before it, and a fine-tune on those learns nothing new, so the fine-tune is
*due* once ``wait_examples`` training examples arrived since the alert (or ``wait_s``
passed: a quiet stream must not wait for ever). When it is due, the learner may have
healed meanwhile: hit@20 over the examples scored since the alert is back within the
recovered tolerance of where it stood (``DriftMonitor.recovered``). Then the fine-tune has
nothing to add and is skipped (with ``skip_recovered``), and ``skipped_alert`` says why.
The drift loop decides with the loop's clock, ``streamrec bench drift`` with event time:
one rule for both.

>>> from streamrec.alerts import make_alert
>>> alert = make_alert("hit_rate", "hit@20", 0.8, 0.3, 5000, 7)
>>> mark = QualityMark(reference=0.8, hits=4000.0, examples=5000)
>>> schedule = FinetuneSchedule(wait_examples=2000, wait_s=300.0, skip_recovered=True)
>>> schedule.schedule(alert, mark, examples_seen=5000, now_s=0.0)
True
>>> schedule.due(examples_seen=6999, now_s=10.0, recovered=lambda mark: False) is None
True
>>> schedule.due(examples_seen=7000, now_s=11.0, recovered=lambda mark: False).skip
False
>>> schedule.pending is None
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from online_models.drift.monitor import QualityMark
from streamrec.alerts import Alert, make_alert

SKIPPED = "finetune_skipped"


@dataclass(frozen=True, slots=True)
class PendingFinetune:
    """A scheduled fine-tune: its alert, where quality stood, and when it was scheduled."""

    alert: Alert
    mark: QualityMark
    examples_at: int
    scheduled_s: float


@dataclass(frozen=True, slots=True)
class DueFinetune:
    """A fine-tune whose wait is over (scheduled at ``scheduled_s``); ``skip``: the learner
    recovered by itself."""

    alert: Alert
    mark: QualityMark
    skip: bool
    scheduled_s: float


class FinetuneSchedule:
    """At most one pending fine-tune; ``due`` hands it over once its wait is over."""

    def __init__(self, wait_examples: int, wait_s: float, skip_recovered: bool) -> None:
        self.wait_examples = wait_examples
        self.wait_s = wait_s
        self.skip_recovered = skip_recovered
        self.pending: PendingFinetune | None = None

    def schedule(self, alert: Alert, mark: QualityMark, examples_seen: int, now_s: float) -> bool:
        """Schedule ``alert``'s fine-tune; False when one is already pending."""
        if self.pending is not None:
            return False
        self.pending = PendingFinetune(alert, mark, examples_seen, now_s)
        return True

    def due(
        self, examples_seen: int, now_s: float, recovered: Callable[[QualityMark], bool]
    ) -> DueFinetune | None:
        """The pending fine-tune once ``wait_examples`` examples arrived since its alert or
        ``wait_s`` passed (it is then no longer pending); None before that."""
        pending = self.pending
        if pending is None:
            return None
        collected = examples_seen - pending.examples_at >= self.wait_examples
        if not collected and now_s - pending.scheduled_s < self.wait_s:
            return None
        self.pending = None
        skip = self.skip_recovered and recovered(pending.mark)
        return DueFinetune(pending.alert, pending.mark, skip, pending.scheduled_s)


def skipped_alert(
    due: DueFinetune, level: float, position: int, model_version: int | None
) -> Alert:
    """The info alert of a skipped fine-tune: which alert, and that quality came back."""
    alert, reference = due.alert, due.mark.reference
    return make_alert(
        SKIPPED, "hit@20", reference, level, position, model_version,
        message=f"no fine-tune for {alert.detector} alert {alert.alert_id}: the learner "
        f"recovered by itself (hit@20 {level:.4g} now, {reference:.4g} before the drift), "
        "so a fine-tune has nothing to add",
    )  # fmt: skip
