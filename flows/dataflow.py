"""The feature dataflow: clicks, purchases and impressions to session features, popularity,
examples and exposure feedback.

Run it with ``streamrec flow`` (recovery, metrics and scaling options from settings), or
directly with ``python -m bytewax.run flows.dataflow:flow`` (settings from the
environment, metrics on the default Prometheus registry; ``flow`` is built on first
access, not at import).

Steps (ids are stable: recovery snapshots are stored under them)::

    kafka_in    BatchKafkaSource over clicks + purchases + impressions, one item per poll
    route       parse each message; (shard key, ShardInput) per shard; rejects -> dead letters
    features    stateful per shard: FeatureShard.apply -> ShardOutput (with the exposure join)
    popularity  stateful, one key: ItemPopularity over the shards' item events
    exposure_counts  stateful, one key: ExposureCounts over the shards' closed outcomes
    publish     FeaturePublisher: Redis pipeline + Kafka produce, flushed at each snapshot

All logic lives in the modules these steps call; this module only wires them. The stateful
steps also check, every ``redis_check_s``, that Redis still holds what they wrote, and send
their whole state again when it does not (``redis_resync.py``); the source restarts a
partition emptied under the flow. Both raise an alert (``alerts.py``). Every method
Bytewax calls logs its exception before Bytewax sees it (``failure_log.py``).
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from prometheus_client import REGISTRY

from flows.batch_kafka_source import BatchKafkaSource, OnReset, TopicReset, ignore_reset
from flows.event_routing import EventRouter, ShardInput, SourceBatch
from flows.exposure_counts import CountsUpdate, ExposureCounts
from flows.failure_log import logs_failure
from flows.feature_config import FeatureConfig
from flows.item_popularity import ItemPopularity, PopularityUpdate
from flows.metrics import FlowMetrics
from flows.publisher import FeaturePublisher, FreshnessLog
from flows.redis_resync import RESYNC_CHUNK, RedisMarker, ResyncCheck, ResyncNote
from flows.shard import FeatureShard, ShardOutput
from streamrec.alert_sender import AlertSender
from streamrec.alerts import StreamOffset, make_alert
from streamrec.events import EventLimits
from streamrec.exposure_outcomes import ExposureOutcome
from streamrec.redis_connection import connect_redis
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings, load_settings
from streamrec.topics import Topics

POPULAR_KEY = "popular"
EXPOSURE_COUNTS_KEY = "exposure-counts"
PopularityEvents = list[tuple[str, int, float]]


class FeatureShardLogic(StatefulBatchLogic[ShardInput, ShardOutput | ResyncNote, bytes]):
    """Bytewax shell around one ``FeatureShard``: applies batches, and writes every session
    again when Redis lost data (checked every ``redis_check_s``, also while idle)."""

    def __init__(self, shard: FeatureShard, check: ResyncCheck) -> None:
        self.shard = shard
        self.check = check

    @logs_failure
    def on_batch(self, values: list[ShardInput]) -> tuple[list[ShardOutput | ResyncNote], bool]:
        outputs = self._resync()
        outputs.append(self.shard.apply(values))
        return outputs, StatefulBatchLogic.RETAIN

    @logs_failure
    def on_notify(self) -> tuple[list[ShardOutput | ResyncNote], bool]:
        return self._resync(), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime:
        return self.check.next_check_at

    def _resync(self) -> list[ShardOutput | ResyncNote]:
        resync = self.check.due(self.shard.synced)
        if resync is None:
            return []
        outputs: list[ShardOutput | ResyncNote] = [*self.shard.full_state(RESYNC_CHUNK)]
        self.shard.synced = resync.marker
        entries = len(self.shard.sessions)
        outputs.append(ResyncNote("sessions", entries, resync.marker, resync.detected))
        return outputs

    @logs_failure
    def snapshot(self) -> bytes:
        return self.shard.snapshot()


class PopularityLogic(StatefulBatchLogic[PopularityEvents, PopularityUpdate | ResyncNote, bytes]):
    """Bytewax shell around the single ``ItemPopularity``; rebuilds the zset after Redis lost
    data, like ``FeatureShardLogic``."""

    def __init__(
        self, popularity: ItemPopularity, metrics: FlowMetrics, check: ResyncCheck
    ) -> None:
        self.popularity = popularity
        self.metrics = metrics
        self.check = check

    @logs_failure
    def on_batch(
        self, values: list[PopularityEvents]
    ) -> tuple[list[PopularityUpdate | ResyncNote], bool]:
        outputs = self._resync()
        events = [event for batch in values for event in batch]
        update = self.popularity.add(events)
        self.metrics.popular_items.set(len(self.popularity.scores))
        if update.scores:
            outputs.append(update)
        return outputs, StatefulBatchLogic.RETAIN

    @logs_failure
    def on_notify(self) -> tuple[list[PopularityUpdate | ResyncNote], bool]:
        return self._resync(), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime:
        return self.check.next_check_at

    def _resync(self) -> list[PopularityUpdate | ResyncNote]:
        resync = self.check.due(self.popularity.synced)
        if resync is None:
            return []
        self.popularity.synced = resync.marker
        entries = len(self.popularity.scores)
        note = ResyncNote("popularity", entries, resync.marker, resync.detected)
        return [self.popularity.full_update(), note]

    @logs_failure
    def snapshot(self) -> bytes:
        return self.popularity.snapshot()


class ExposureCountsLogic(
    StatefulBatchLogic[list[ExposureOutcome], CountsUpdate | ResyncNote, bytes]
):
    """Bytewax shell around the single ``ExposureCounts``; writes every count again after
    Redis lost data, like ``PopularityLogic``."""

    def __init__(self, counts: ExposureCounts, check: ResyncCheck) -> None:
        self.counts = counts
        self.check = check

    @logs_failure
    def on_batch(
        self, values: list[list[ExposureOutcome]]
    ) -> tuple[list[CountsUpdate | ResyncNote], bool]:
        outputs = self._resync()
        update = self.counts.add(outcome for outcomes in values for outcome in outcomes)
        if update:
            outputs.append(update)
        return outputs, StatefulBatchLogic.RETAIN

    @logs_failure
    def on_notify(self) -> tuple[list[CountsUpdate | ResyncNote], bool]:
        return self._resync(), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime:
        return self.check.next_check_at

    def _resync(self) -> list[CountsUpdate | ResyncNote]:
        resync = self.check.due(self.counts.synced)
        if resync is None:
            return []
        self.counts.synced = resync.marker
        entries = len(self.counts.shown)
        note = ResyncNote("exposure_counts", entries, resync.marker, resync.detected)
        return [self.counts.full_update(), note]

    @logs_failure
    def snapshot(self) -> bytes:
        return self.counts.snapshot()


def source_for(settings: Settings, on_reset: OnReset = ignore_reset) -> BatchKafkaSource:
    """The input: every partition of the clicks, purchases and impressions topics;
    ``on_reset`` is told of each one found emptied under the flow (``build_flow`` counts and
    alerts)."""
    topics = Topics.from_settings(settings.kafka)
    return BatchKafkaSource(
        settings.kafka.client_config(),
        [topics.clicks, topics.purchases, topics.impressions],
        batch_size=settings.flow.batch_size,
        stop_at_end=settings.flow.stop_at_end,
        fetch_wait_max_ms=settings.kafka.fetch_wait_max_ms,
        on_reset=on_reset,
    )


def topic_reset_handler(metrics: FlowMetrics, alerts: AlertSender) -> OnReset:
    """Count a partition found emptied under the flow and raise the ``topic_reset`` alert."""

    def on_reset(reset: TopicReset) -> None:
        metrics.topic_resets.labels(reset.topic).inc()
        end = "out of range" if reset.end < 0 else f"beyond its end {reset.end}"
        alerts.send(
            make_alert(
                "topic_reset", "offset_beyond_end", float(reset.offset), float(reset.end), 0, None,
                message=f"{reset.topic}[{reset.partition}]: offset {reset.offset} is {end}; the "
                "topic was emptied (broker restart?); reading it again from its beginning",
                offsets=(StreamOffset(reset.topic, reset.partition, reset.offset),),
            )
        )  # fmt: skip

    return on_reset


def build_flow(
    settings: Settings,
    metrics: FlowMetrics,
    freshness_log: FreshnessLog | None = None,
    source: BatchKafkaSource | None = None,
) -> Dataflow:
    """The dataflow for ``settings``, counting on ``metrics``.

    Benchmarks pass a ``freshness_log`` (raw freshness values) and their own ``source``
    (to stop a tailing flow); otherwise both come from settings.
    """
    flow_settings = settings.flow
    config = FeatureConfig.from_settings(flow_settings)
    router = EventRouter(EventLimits.from_settings(settings.events), flow_settings.state_shards)
    half_life_ms = flow_settings.popular_half_life_s * 1000.0
    state_items = max(flow_settings.popular_state_items, flow_settings.popular_size)
    alerts = AlertSender(settings)
    marker = RedisMarker(
        connect_redis(
            settings.redis.redis_url.get_secret_value(),
            socket_timeout=settings.redis.redis_timeout_s,
            socket_connect_timeout=settings.redis.redis_timeout_s,
        ),
        RedisKeys(settings.redis.key_prefix).flow_marker,
    )

    def check() -> ResyncCheck:
        return ResyncCheck(marker, flow_settings.redis_check_s)

    @logs_failure
    def route(batch: SourceBatch) -> list[tuple[str, ShardInput]]:
        routed = router.route(batch)
        metrics.events_in.labels(batch.topic).inc(len(batch.messages))
        for _, shard_input in routed:
            for letter in shard_input.dead_letters:
                metrics.rejects.labels(letter.reason.value).inc()
        return routed

    @logs_failure
    def build_shard(resume: bytes | None) -> FeatureShardLogic:
        return FeatureShardLogic(FeatureShard.restore(config, resume), check())

    @logs_failure
    def build_popularity(resume: bytes | None) -> PopularityLogic:
        popularity = ItemPopularity.restore(half_life_ms, state_items, resume)
        return PopularityLogic(popularity, metrics, check())

    @logs_failure
    def build_exposure_counts(resume: bytes | None) -> ExposureCountsLogic:
        return ExposureCountsLogic(ExposureCounts.restore(resume), check())

    def exposure_outcomes(
        keyed: tuple[str, ShardOutput | ResyncNote],
    ) -> tuple[str, list[ExposureOutcome]] | None:
        value = keyed[1]
        if type(value) is not ShardOutput or not value.exposures:
            return None
        return EXPOSURE_COUNTS_KEY, value.exposures

    def popularity_events(
        keyed: tuple[str, ShardOutput | ResyncNote],
    ) -> tuple[str, PopularityEvents] | None:
        value = keyed[1]
        if type(value) is not ShardOutput or not value.popularity:
            return None
        return POPULAR_KEY, value.popularity

    flow = Dataflow("streamrec_features")
    input_source = source or source_for(settings, topic_reset_handler(metrics, alerts))
    batches = op.input("kafka_in", flow, input_source)
    routed = op.flat_map("route", batches, route)
    features = op.stateful_batch("features", routed, build_shard)
    item_events = op.filter_map("popularity_events", features, popularity_events)
    popular = op.stateful_batch("popularity", item_events, build_popularity)
    outcomes = op.filter_map("exposure_outcomes", features, exposure_outcomes)
    counts = op.stateful_batch("exposure_counts", outcomes, build_exposure_counts)
    publish = op.merge("to_publish", features, popular, counts)
    publisher = FeaturePublisher(settings, metrics, alerts, marker, freshness_log)
    op.output("publish", publish, publisher)
    return flow


@functools.cache
def _flow_from_environment() -> Dataflow:
    """Built once: its metrics register on the process's default registry."""
    return build_flow(load_settings(), FlowMetrics(REGISTRY))


def __getattr__(name: str) -> Any:
    """``flow``: the dataflow from the environment's settings, for ``bytewax.run``."""
    if name == "flow":
        return _flow_from_environment()
    raise AttributeError(name)
