"""The canary watch inside the drift monitor: the I/O around ``CanaryWatch``.

While the registry has a canary pointer (``WeightRegistry.canary_version``: a fine-tune
rolled out with ``STREAMREC_DRIFT_ROLLOUT=canary``, or one set by hand), this reads
impressions, clicks and purchases from the bus, joins them into exposure outcomes with
the one join (``streamrec.exposure_outcomes.ExposureJoin``, with the flow's horizon
``FlowSettings.exposure_horizon_s`` like ``streamrec experiments report``), counts the
canary and control arms' outcomes and acts on the verdict (``canary_watch``): promote,
roll back, or keep the control at the deadline (``online_models.finetune.canary_rollout``).
No canary: it reads nothing.

**Restart-safe by re-reading.** Nothing is committed and nothing of the counts is kept:
the canary's start time is in the drift status hash (``canary_started_ms``), and a
(re)started watch assigns the topics' partitions from that time (``offsets_for_times``,
one horizon earlier) and counts again from scratch. The counts are a function of the
topics, so a restart reaches the same ones; an impression delivered twice is counted
once (the join keeps its first copy, the watch counts each request id once).

**Time.** The join closes outcomes by event time as events arrive. While the watch
re-reads what was there when it started, it hands events to the join oldest first across
the three topics' partitions (each topic is fetched at its own pace; in arrival order an
impression read ahead of its click would close unclicked), and the wall clock waits.
Once read up to there, events go on in arrival order and the wall clock closes outcomes
too (serving stamps events with it), so the last impressions of a quiet stream resolve;
only then is a verdict taken (a monitor restarted past the deadline judges the re-read
counts, not empty ones). The deadline is wall clock from the start.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from online_models.drift.canary_watch import CanaryVerdict, CanaryWatch
from online_models.drift.metrics import DriftMetrics
from online_models.finetune.canary_rollout import (
    canary_started_ms,
    drop_canary,
    promote_canary,
    record_canary_counts,
    record_canary_start,
)
from online_models.registry.weight_registry import WeightLoadError, WeightRegistry
from streamrec.events import Event, EventLimits, parse_event
from streamrec.exposure_outcomes import ExposureJoin, ExposureOutcome
from streamrec.kafka_clients import make_consumer
from streamrec.redis_connection import RedisClient
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings
from streamrec.structured_log import log_event
from streamrec.topics import Topics

logger = logging.getLogger("streamrec.drift.canary")

Partition = tuple[str, int]  # (topic, partition)
# A partition that delivers nothing this long is taken as read to its end.
BACKLOG_IDLE_S = 5.0


class CanaryLoop:
    """Follows the canary pointer; ``read`` often, ``check`` about once a second.

    ``on_promoted`` gets the new current version after a promotion (the drift monitor
    starts its promotion watch on it).
    """

    def __init__(
        self,
        settings: Settings,
        client: RedisClient,
        metrics: DriftMetrics,
        on_promoted: Callable[[int], None],
    ) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.on_promoted = on_promoted
        self.keys = RedisKeys(settings.redis.key_prefix)
        self.registry = WeightRegistry(settings, client)
        self.topics = Topics.from_settings(settings.kafka)
        self.limits = EventLimits.from_settings(settings.events)
        self.horizon_ms = int(settings.flow.exposure_horizon_s * 1000)
        self.watch: CanaryWatch | None = None
        self.join = ExposureJoin(self.horizon_ms)
        self._consumer: Consumer | None = None
        # Partition -> its end when reading started: until each is read that far, events
        # go to the join in time order across partitions and the wall clock waits.
        self._backlog: dict[Partition, int] = {}
        self._pending: dict[Partition, deque[Event]] = {}
        self._last_message = 0.0

    def read(self) -> None:
        """Feed what the bus has now to the join (does not wait; nothing without a canary)."""
        if self._consumer is None:
            return
        messages = self._consumer.consume(2000, 0)
        now = time.monotonic()
        if messages:
            self._last_message = now
        elif self._backlog and now - self._last_message > BACKLOG_IDLE_S:
            log_event(logger, "canary_backlog_idle", logging.WARNING, left=len(self._backlog))
            self._backlog.clear()  # the broker has nothing more: what is read is all there is
        for message in messages:
            if message.error() is not None:
                continue
            where = (message.topic(), message.partition())
            if self._backlog.get(where, -1) <= message.offset() + 1:
                self._backlog.pop(where, None)
            event = parse_event(message.value(), self.limits)
            if isinstance(event, Event):
                self._pending.setdefault(where, deque()).append(event)
        self._release()

    def _release(self) -> None:
        """Pass buffered events to the join, oldest first, while no partition that still
        has a backlog is waiting for its next batch (a re-read fetches each topic at its
        own pace; in arrival order an impression could close before its click is read)."""
        pending = self._pending
        while True:
            if any(not pending.get(where) for where in self._backlog):
                return
            heads = [where for where, queue in pending.items() if queue]
            if not heads:
                return
            oldest = min(heads, key=lambda where: pending[where][0].ts)
            self._count(self.join.observe(pending[oldest].popleft()))

    def check(self, now_ms: int | None = None) -> CanaryVerdict | None:
        """Follow the pointer, resolve what the clock closes, and act on a due verdict."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        version = self.registry.canary_version()
        if version is None:
            self._stop()
            return None
        watch = self.watch
        if watch is None or watch.version != version:
            watch = self._start(version, now_ms)
        if not self._backlog:
            self._count(self.join.advance(now_ms))
        self._export(watch)
        if self._backlog:
            return None  # re-reading: judge only what a watch that never stopped would
        verdict = watch.verdict(now_ms)
        if verdict is not None:
            self._act(watch.version, verdict)
            self._stop()
        return verdict

    def close(self) -> None:
        self._stop()

    def _start(self, version: int, now_ms: int) -> CanaryWatch:
        self._stop()
        started = canary_started_ms(self.client, self.keys, version)
        if started is None:
            started = now_ms
            record_canary_start(self.client, self.keys, version, started)
        drift = self.settings.drift
        self.watch = CanaryWatch(
            version,
            started_ms=started,
            control=self.settings.experiment.control,
            min_impressions=drift.canary_min_impressions,
            alpha=drift.canary_alpha,
            deadline_ms=int(drift.canary_deadline_s * 1000),
            on_deadline=drift.canary_on_deadline,
        )
        self.join = ExposureJoin(self.horizon_ms)
        self._pending = {}
        self._consumer = self._assign_from(started - self.horizon_ms)
        self._last_message = time.monotonic()
        self.metrics.canary_version.set(version)
        log_event(logger, "canary_watch_started", version=version, started_ms=started)
        return self.watch

    def _assign_from(self, since_ms: int) -> Consumer:
        """A consumer on every partition of the three topics, from ``since_ms`` on (a coarse
        time lookup reads more, never less: outcomes before the start are not counted)."""
        consumer = make_consumer(
            self.settings.kafka, f"{self.settings.drift.consumer_group}-canary"
        )
        wanted: list[TopicPartition] = []
        for topic in (self.topics.impressions, self.topics.clicks, self.topics.purchases):
            try:
                partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            except (KafkaException, KeyError) as exc:
                log_event(
                    logger, "canary_topic_missing", logging.WARNING, topic=topic, error=repr(exc)
                )
                continue
            wanted += [TopicPartition(topic, p, since_ms) for p in sorted(partitions)]
        found = consumer.offsets_for_times(wanted, timeout=10) if wanted else []
        starts = [TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)) for tp in found]
        self._backlog = {}
        for start in starts:
            _, end = consumer.get_watermark_offsets(start, timeout=10)
            if end > start.offset:
                self._backlog[(start.topic, start.partition)] = end
        consumer.assign(starts)
        return consumer

    def _stop(self) -> None:
        self._pending, self._backlog = {}, {}
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self.watch is not None:
            self.watch = None
            self.metrics.canary_version.set(0)

    def _count(self, outcomes: list[ExposureOutcome]) -> None:
        if self.watch is not None:
            for outcome in outcomes:
                self.watch.observe(outcome)

    def _export(self, watch: CanaryWatch) -> None:
        for arm, tally in (("canary", watch.canary), ("control", watch.control_tally)):
            self.metrics.canary_impressions.labels(arm).set(tally.impressions)
            if tally.impressions:
                self.metrics.canary_rate.labels(arm, "ctr").set(tally.rate("ctr"))
                self.metrics.canary_rate.labels(arm, "served_hr").set(tally.rate("served_hr"))
        record_canary_counts(
            self.client,
            self.keys,
            canary=(watch.canary.impressions, watch.canary.clicked),
            control=(watch.control_tally.impressions, watch.control_tally.clicked),
        )

    def _act(self, version: int, verdict: CanaryVerdict) -> None:
        ctrs = (verdict.control.rate("ctr"), verdict.canary.rate("ctr"))
        impressions = verdict.canary.impressions
        log_event(
            logger, "canary_verdict", version=version, action=verdict.action,
            reason=verdict.reason, canary_impressions=impressions,
            control_impressions=verdict.control.impressions,
        )  # fmt: skip
        self.metrics.canary_decisions.labels(verdict.action).inc()
        if verdict.action != "promote":
            worse = verdict.action == "roll_back"
            drop_canary(
                self.settings, self.client, version, ctrs, impressions,
                worse=worse, reason=verdict.reason,
            )  # fmt: skip
            return
        try:
            current = promote_canary(
                self.settings, self.client, version, ctrs, impressions, verdict.reason
            )
        except (LookupError, RuntimeError, WeightLoadError) as exc:
            log_event(logger, "canary_promotion_failed", logging.ERROR, error=repr(exc))
            drop_canary(
                self.settings, self.client, version, ctrs, impressions,
                worse=True, reason=f"{verdict.reason}; but promoting failed: {exc!r}",
            )  # fmt: skip
            return
        self.on_promoted(current)
