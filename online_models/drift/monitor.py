"""The drift monitor's decisions: signals in, alerts out (pure; the loop is in drift_loop.py).

``DriftMonitor`` owns one ``GuardedDetector`` per configured detector and feeds each the
observations of its signal:

- learner signals (per micro-batch): hit@20 spread over the batch's examples -> ``hit_rate``
  (a warning), and after a drop the ``RecoveryWatch`` -> ``quality_not_recovered`` (the
  page: the drop did not heal); the batch's mean loss -> ``loss``;
- training examples: category share, never-seen target, session position -> the
  input-distribution detectors;
- impressions and clicks: one clicked/not outcome per impression -> ``ctr``.

Every alert carries the model version of the latest learner signal and the stream offsets
of the observation that tripped it. Whether an alert starts a fine-tune is decided here too
(``wants_finetune``); the cooldown is a Redis lock held by the loop and the fine-tune.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from online_models.drift.detectors import GuardedDetector, detector_specs
from online_models.drift.promotion_watch import PromotionWatch, Regressed
from online_models.drift.recovery_watch import RecoveryWatch, Stalled
from online_models.drift.signals import (
    CtrTracker,
    ImpressionOutcome,
    InputSignals,
    spread_hits,
)
from online_models.learner.signal import LearnerSignal
from streamrec.alerts import FINETUNE_TRIGGERS, Alert, StreamOffset, make_alert
from streamrec.settings import Settings
from streamrec.topics import Topics
from streamrec.training_examples import TrainingExample

REFERENCE_SESSIONS = 300  # sessions that make the category reference
NOT_RECOVERED = "quality_not_recovered"
REGRESSED = "promotion_regressed"
MIN_RECOVERY_EXAMPLES = 200  # scored since an alert, to call the learner recovered
RECENT_EXAMPLES = 500  # the newest scored examples that say where quality stands now


@dataclass(frozen=True, slots=True)
class QualityMark:
    """hit@20 to recover to, and the monitor's hit and example counts at the time."""

    reference: float
    hits: float
    examples: int


class DriftMonitor:
    """Feed signals with ``on_*``; each returns the alerts it raised (usually none).

    An alert's ``position`` counts what the monitor had seen of that signal's stream:
    examples in learner signals (hit@20, loss), training examples (input detectors) or
    resolved impressions (CTR).
    """

    def __init__(self, settings: Settings) -> None:
        drift = settings.drift
        self.detectors = {
            name: GuardedDetector(spec, drift.warmup_examples, drift.min_alert_spacing)
            for name, spec in detector_specs(drift).items()
        }
        # Loss: one value per micro-batch; category and session length: one per session.
        # Warm-up and spacing are configured in examples, so scale them to values.
        per_session = 5  # examples per session, roughly
        examples_per_value = {
            "loss": settings.learner.batch_size,
            "category_share": per_session,
            "session_length": per_session,
        }
        for name, per_value in examples_per_value.items():
            if name in self.detectors:
                self.detectors[name].warmup = drift.warmup_examples // per_value
                self.detectors[name].min_spacing = drift.min_alert_spacing // per_value
        self.inputs = InputSignals(
            reference_size=REFERENCE_SESSIONS,
            seen_capacity=drift.seen_items_capacity,
            max_session_len=settings.flow.history_len,
            session_idle_ms=int(drift.session_idle_s * 1000),
        )
        self.ctr = CtrTracker(drift.ctr_horizon)
        self.recovery = RecoveryWatch(
            drift.recovery_window, drift.recovered_within, int(drift.page_after_s * 1000)
        )
        self.promotion = PromotionWatch(drift.recovery_window, drift.promotion_margin)
        self.model_version: int | None = None
        self.examples_seen = 0
        self.signal_examples = 0
        self.hits_seen = 0.0  # hit@20 values summed over ``signal_examples``
        self.recent_hits: deque[float] = deque(maxlen=RECENT_EXAMPLES)
        self.impressions_resolved = 0
        self.topics = Topics.from_settings(settings.kafka)

    def on_learner_signal(self, signal: LearnerSignal) -> list[Alert]:
        self.model_version = signal.model_version
        # The learner reports the lowest and highest source-event offset of the batch; the
        # batch spans partitions, so the partition is unknown (-1).
        where = (
            StreamOffset(self.topics.clicks, -1, signal.first_offset),
            StreamOffset(self.topics.clicks, -1, signal.last_offset),
        )
        alerts: list[Alert] = []
        hit_rate = self.detectors.get("hit_rate")
        for value in spread_hits(signal.hits_at_20, signal.examples):
            self.signal_examples += 1
            self.hits_seen += value
            self.recent_hits.append(value)
            regressed = self.promotion.observe(value, signal.model_version)
            if regressed is not None:
                alerts.append(self._regressed(regressed, where))
            if hit_rate is None:
                continue
            for alert in self._feed(hit_rate, value, where, self.signal_examples):
                self.recovery.dropped(alert.level_before, signal.ts_ms)
                alerts.append(alert)
            stalled = self.recovery.observe(value, signal.ts_ms)
            if stalled is not None:
                alerts.append(self._not_recovered(stalled, signal.ts_ms, where))
        loss = self.detectors.get("loss")
        if loss is not None and math.isfinite(signal.mean_loss):
            alerts += self._feed(loss, signal.mean_loss, where, self.signal_examples)
        return alerts

    def on_example(self, example: TrainingExample, partition: int, offset: int) -> list[Alert]:
        self.examples_seen += 1
        where = (
            StreamOffset(example.source_topic, example.source_partition, example.source_offset),
            StreamOffset(self.topics.training_examples, partition, offset),
        )
        alerts: list[Alert] = []
        detector = self.detectors.get("category_share")
        share = self.inputs.category_share(example)
        if detector is not None and share is not None:
            raised = self._feed(detector, share, where, self.examples_seen)
            if raised:
                self.inputs.relearn_categories()
            alerts += raised
        detector = self.detectors.get("new_items")
        never_seen = self.inputs.never_seen(example)
        if detector is not None:
            alerts += self._feed(detector, never_seen, where, self.examples_seen)
        detector = self.detectors.get("session_length")
        for length in self.inputs.ended_sessions(example):
            if detector is not None:
                alerts += self._feed(detector, length, where, self.examples_seen)
        return alerts

    def on_impression(
        self, request_id: str, items: tuple[str, ...], partition: int, offset: int
    ) -> list[Alert]:
        alerts: list[Alert] = []
        for outcome in self.ctr.impression(request_id, items, partition, offset):
            alerts += self._feed_ctr(outcome)
        return alerts

    def on_click(self, request_id: str | None, item_id: str) -> list[Alert]:
        outcome = self.ctr.click(request_id, item_id)
        return [] if outcome is None else self._feed_ctr(outcome)

    def quality_mark(self, alert: Alert) -> QualityMark:
        """Where quality stood when ``alert`` came: hit@20 to recover to (the level before
        a hit-rate drop, else the recent level) and the hit count so far."""
        hit_rate = self.detectors.get("hit_rate")
        if alert.detector == "hit_rate":
            reference = alert.level_before
        else:
            reference = hit_rate.level if hit_rate is not None else math.nan
        return QualityMark(reference, self.hits_seen, self.signal_examples)

    def recovered(self, mark: QualityMark) -> bool:
        """Whether hit@20 now (``level_since``; at least ``MIN_RECOVERY_EXAMPLES`` scored
        since ``mark``) is back within ``recovered_within`` of its reference: the learner
        healed by itself, and a fine-tune has nothing to add."""
        examples = self.signal_examples - mark.examples
        if examples < MIN_RECOVERY_EXAMPLES or math.isnan(mark.reference):
            return False
        return self.level_since(mark) >= (1 - self.recovery.tolerance) * mark.reference

    def level_since(self, mark: QualityMark) -> float:
        """hit@20 now: over the examples scored since ``mark``, or over the newest
        ``RECENT_EXAMPLES`` of them when there are more (the mean since an alert still
        carries the worst moments right after the change: a learner that healed a while
        ago would not count as healed). NaN: none yet."""
        examples = self.signal_examples - mark.examples
        if examples > len(self.recent_hits):
            return sum(self.recent_hits) / len(self.recent_hits)
        return (self.hits_seen - mark.hits) / examples if examples else math.nan

    def watch_promotion(self, version: int) -> None:
        """A fine-tune made ``version`` current: judge it on the next examples it ranks
        against the hit@20 the previous lineage had just now (nothing to judge against yet:
        no watch)."""
        hit_rate = self.detectors.get("hit_rate")
        if hit_rate is not None and not math.isnan(hit_rate.level):
            self.promotion.start(version, hit_rate.level)

    def _regressed(self, regressed: Regressed, where: tuple[StreamOffset, ...]) -> Alert:
        return make_alert(
            REGRESSED, "hit@20", regressed.level_before, regressed.level_after,
            self.signal_examples, regressed.version,
            message=f"promoted v{regressed.version} ranks hit@20 {regressed.level_after:.4g} "
            f"live, against {regressed.level_before:.4g} before it",
            offsets=where,
        )  # fmt: skip

    def _not_recovered(
        self, stalled: Stalled, ts_ms: int, where: tuple[StreamOffset, ...]
    ) -> Alert:
        minutes = (ts_ms - stalled.since_ms) / 60_000
        return make_alert(
            NOT_RECOVERED, "hit@20", stalled.level_before, stalled.level_now,
            self.signal_examples, self.model_version,
            message=f"hit@20 is {stalled.level_now:.4g}, {minutes:.0f} min (event time) after "
            f"it dropped from {stalled.level_before:.4g}: the learner and the fine-tune did "
            "not bring it back",
            offsets=where,
        )  # fmt: skip

    def levels(self) -> dict[str, float]:
        """Recent level of each detector's signal (for the gauges and ``model status``)."""
        return {name: detector.level for name, detector in self.detectors.items()}

    def _feed_ctr(self, outcome: ImpressionOutcome) -> list[Alert]:
        self.impressions_resolved += 1
        detector = self.detectors.get("ctr")
        if detector is None:
            return []
        where = (StreamOffset(self.topics.impressions, outcome.partition, outcome.offset),)
        value = 1.0 if outcome.clicked else 0.0
        return self._feed(detector, value, where, self.impressions_resolved)

    def _feed(
        self,
        detector: GuardedDetector,
        value: float,
        where: tuple[StreamOffset, ...],
        position: int,
    ) -> list[Alert]:
        detection = detector.update(value)
        if detection is None:
            return []
        alert = make_alert(
            detection.detector,
            detection.signal,
            detection.level_before,
            detection.level_after,
            position,
            self.model_version,
            message=f"{detection.signal} moved from {detection.level_before:.4g} "
            f"to {detection.level_after:.4g}",
            offsets=where,
        )
        return [alert]


def wants_finetune(alert: Alert, enabled: bool) -> bool:
    """Whether this alert should start a fine-tune (the cooldown is checked by the caller)."""
    return enabled and alert.detector in FINETUNE_TRIGGERS
