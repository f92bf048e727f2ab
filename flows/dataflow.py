"""The feature dataflow: clicks and purchases to session features, popularity and examples.

Run it with ``streamrec flow`` (recovery, metrics and scaling options from settings), or
directly with ``python -m bytewax.run flows.dataflow:flow`` (settings from the
environment, metrics on the default Prometheus registry; ``flow`` is built on first
access, not at import).

Steps (ids are stable: recovery snapshots are stored under them)::

    kafka_in    BatchKafkaSource over clicks + purchases, one item per poll
    route       parse each message; (shard key, ShardInput) per shard; rejects -> dead letters
    features    stateful per shard: FeatureShard.apply -> ShardOutput
    popularity  stateful, one key: ItemPopularity over the shards' item events
    publish     FeaturePublisher: Redis pipeline + Kafka produce, flushed at each snapshot

All logic lives in the modules these steps call; this module only wires them.
"""

from __future__ import annotations

import functools
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from prometheus_client import REGISTRY

from flows.batch_kafka_source import BatchKafkaSource
from flows.event_routing import EventRouter, ShardInput, SourceBatch
from flows.feature_config import FeatureConfig
from flows.item_popularity import ItemPopularity, PopularityUpdate
from flows.metrics import FlowMetrics
from flows.publisher import FeaturePublisher, FreshnessLog
from flows.shard import FeatureShard, ShardOutput
from streamrec.events import EventLimits
from streamrec.settings import Settings, load_settings
from streamrec.topics import Topics

POPULAR_KEY = "popular"
PopularityEvents = list[tuple[str, int, float]]


class FeatureShardLogic(StatefulBatchLogic[ShardInput, ShardOutput, bytes]):
    """Bytewax shell around one ``FeatureShard``."""

    def __init__(self, shard: FeatureShard) -> None:
        self.shard = shard

    def on_batch(self, values: list[ShardInput]) -> tuple[list[ShardOutput], bool]:
        return [self.shard.apply(values)], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return self.shard.snapshot()


class PopularityLogic(StatefulBatchLogic[PopularityEvents, PopularityUpdate, bytes]):
    """Bytewax shell around the single ``ItemPopularity``."""

    def __init__(self, popularity: ItemPopularity, metrics: FlowMetrics) -> None:
        self.popularity = popularity
        self.metrics = metrics

    def on_batch(self, values: list[PopularityEvents]) -> tuple[list[PopularityUpdate], bool]:
        events = [event for batch in values for event in batch]
        update = self.popularity.add(events)
        self.metrics.popular_items.set(len(self.popularity.scores))
        return ([update] if update.scores else []), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return self.popularity.snapshot()


def source_for(settings: Settings) -> BatchKafkaSource:
    """The input: every partition of the clicks and purchases topics."""
    topics = Topics.from_settings(settings.kafka)
    return BatchKafkaSource(
        settings.kafka.client_config(),
        [topics.clicks, topics.purchases],
        batch_size=settings.flow.batch_size,
        stop_at_end=settings.flow.stop_at_end,
        fetch_wait_max_ms=settings.kafka.fetch_wait_max_ms,
    )


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

    def route(batch: SourceBatch) -> list[tuple[str, ShardInput]]:
        routed = router.route(batch)
        metrics.events_in.labels(batch.topic).inc(len(batch.messages))
        for _, shard_input in routed:
            for letter in shard_input.dead_letters:
                metrics.rejects.labels(letter.reason.value).inc()
        return routed

    def build_shard(resume: bytes | None) -> FeatureShardLogic:
        return FeatureShardLogic(FeatureShard.restore(config, resume))

    def build_popularity(resume: bytes | None) -> PopularityLogic:
        return PopularityLogic(ItemPopularity.restore(half_life_ms, state_items, resume), metrics)

    def popularity_events(keyed: tuple[str, ShardOutput]) -> tuple[str, PopularityEvents] | None:
        events = keyed[1].popularity
        return (POPULAR_KEY, events) if events else None

    flow = Dataflow("streamrec_features")
    batches = op.input("kafka_in", flow, source or source_for(settings))
    routed = op.flat_map("route", batches, route)
    features = op.stateful_batch("features", routed, build_shard)
    item_events = op.filter_map("popularity_events", features, popularity_events)
    popular = op.stateful_batch("popularity", item_events, build_popularity)
    publish = op.merge("to_publish", features, popular)
    op.output("publish", publish, FeaturePublisher(settings, metrics, freshness_log))
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
