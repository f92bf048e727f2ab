"""The drift monitor's decisions: signals in, alerts out (pure; the loop is in drift_loop.py).

``DriftMonitor`` owns one ``GuardedDetector`` per configured detector and feeds each the
observations of its signal:

- learner signals (per micro-batch): hit@20 spread over the batch's examples -> ``hit_rate``;
  the batch's mean loss -> ``loss``;
- training examples: category share, never-seen target, session position -> the
  input-distribution detectors;
- impressions and clicks: one clicked/not outcome per impression -> ``ctr``.

Every alert carries the model version of the latest learner signal and the stream offsets
of the observation that tripped it. Whether an alert starts a fine-tune is decided here too
(``wants_finetune``); the cooldown is a Redis lock held by the loop and the fine-tune.
"""

from __future__ import annotations

import math

from online_models.alerts import FINETUNE_TRIGGERS, Alert, StreamOffset, make_alert
from online_models.drift_detectors import GuardedDetector, detector_specs
from online_models.drift_signals import (
    CtrTracker,
    ImpressionOutcome,
    InputSignals,
    LearnerSignal,
    spread_hits,
)
from streamrec.settings import Settings
from streamrec.topics import Topics
from streamrec.training_examples import TrainingExample


class DriftMonitor:
    """Feed signals with ``on_*``; each returns the alerts it raised (usually none)."""

    def __init__(self, settings: Settings) -> None:
        drift = settings.drift
        self.detectors = {
            name: GuardedDetector(spec, drift.warmup_examples, drift.min_alert_spacing)
            for name, spec in detector_specs(drift).items()
        }
        # The loss detector sees one value per micro-batch: scale its warm-up and spacing.
        if "loss" in self.detectors:
            per_batch = max(1, settings.learner.batch_size)
            self.detectors["loss"].warmup = drift.warmup_examples // per_batch
            self.detectors["loss"].min_spacing = drift.min_alert_spacing // per_batch
        self.inputs = InputSignals(
            reference_size=max(drift.warmup_examples, 1000),
            seen_capacity=drift.seen_items_capacity,
            history_len=settings.flow.history_len,
        )
        self.ctr = CtrTracker(drift.ctr_horizon)
        self.model_version: int | None = None
        self.examples_seen = 0
        self.topics = Topics.from_settings(settings.kafka)

    def on_learner_signal(self, signal: LearnerSignal) -> list[Alert]:
        self.model_version = signal.model_version
        where = (
            StreamOffset(self.topics.training_examples, -1, signal.first_offset),
            StreamOffset(self.topics.training_examples, -1, signal.last_offset),
        )
        alerts: list[Alert] = []
        hit_rate = self.detectors.get("hit_rate")
        if hit_rate is not None and signal.examples > 0:
            for value in spread_hits(signal.hits_at_20, signal.examples):
                alert = self._feed(hit_rate, value, where)
                if alert is not None:
                    alerts.append(alert)
        loss = self.detectors.get("loss")
        if loss is not None and math.isfinite(signal.mean_loss):
            alert = self._feed(loss, signal.mean_loss, where)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def on_example(self, example: TrainingExample, partition: int, offset: int) -> list[Alert]:
        self.examples_seen += 1
        where = (
            StreamOffset(example.source_topic, example.source_partition, example.source_offset),
            StreamOffset(self.topics.training_examples, partition, offset),
        )
        alerts: list[Alert] = []
        detector = self.detectors.get("category_share")
        if detector is not None:
            share = self.inputs.category_share(example)
            if share is not None:
                alert = self._feed(detector, share, where)
                if alert is not None:
                    self.inputs.relearn_categories()
                    alerts.append(alert)
        detector = self.detectors.get("new_items")
        if detector is not None:
            alert = self._feed(detector, self.inputs.never_seen(example), where)
            if alert is not None:
                alerts.append(alert)
        detector = self.detectors.get("session_length")
        if detector is not None:
            alert = self._feed(detector, self.inputs.session_position(example), where)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def on_impression(
        self, request_id: str, items: tuple[str, ...], partition: int, offset: int
    ) -> list[Alert]:
        outcomes = self.ctr.impression(request_id, items, partition, offset)
        return [alert for o in outcomes if (alert := self._feed_ctr(o)) is not None]

    def on_click(self, request_id: str | None, item_id: str) -> list[Alert]:
        outcome = self.ctr.click(request_id, item_id)
        if outcome is None:
            return []
        alert = self._feed_ctr(outcome)
        return [] if alert is None else [alert]

    def levels(self) -> dict[str, float]:
        """Recent level of each detector's signal (for the gauges and ``model status``)."""
        return {name: detector.level for name, detector in self.detectors.items()}

    def _feed_ctr(self, outcome: ImpressionOutcome) -> Alert | None:
        detector = self.detectors.get("ctr")
        if detector is None:
            return None
        where = (StreamOffset(self.topics.impressions, outcome.partition, outcome.offset),)
        return self._feed(detector, 1.0 if outcome.clicked else 0.0, where)

    def _feed(
        self, detector: GuardedDetector, value: float, where: tuple[StreamOffset, ...]
    ) -> Alert | None:
        detection = detector.update(value)
        if detection is None:
            return None
        return make_alert(
            detection.detector,
            detection.signal,
            detection.level_before,
            detection.level_after,
            detection.position,
            self.model_version,
            message=f"{detection.signal} moved from {detection.level_before:.4g} "
            f"to {detection.level_after:.4g}",
            offsets=where,
        )


def wants_finetune(alert: Alert, enabled: bool) -> bool:
    """Whether this alert should start a fine-tune (the cooldown is checked by the caller)."""
    return enabled and alert.detector in FINETUNE_TRIGGERS
