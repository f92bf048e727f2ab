"""Prometheus metrics of the feature flow (all named ``streamrec_flow_*``).

Counters are bumped once per batch with the batch's count, never per event. Freshness is
observed for every event, which a ``prometheus_client.Histogram`` would make cost about a
microsecond each, so it is a ``BatchHistogram`` that takes a whole batch in one numpy call.
All of them live on a ``FlowMetrics`` built from the registry the process serves.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

FRESHNESS_BUCKETS_S = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class BatchHistogram(Collector):
    """A Prometheus histogram fed with arrays of observations at once."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: np.ndarray) -> None:
        """Add every value of ``values`` (seconds)."""
        if values.size == 0:
            return
        places = np.searchsorted(self.bounds, values, side="left")
        counts = np.bincount(places, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def counts(self) -> np.ndarray:
        """Per-bucket (non-cumulative) counts; the last one is +Inf."""
        with self._lock:
            return self._counts.copy()

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total_sum = self._sum
        buckets = [(repr(float(b)), int(c)) for b, c in zip(self.bounds, cumulative, strict=False)]
        buckets.append(("+Inf", int(cumulative[-1])))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, total_sum)
        yield family


class FlowMetrics:
    """What one flow process exports, registered on ``registry`` (shared by its workers)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events_in = Counter(
            "streamrec_flow_events_in_total",
            "Messages read, per source topic.",
            ["topic"],
            registry=registry,
        )
        self.messages_out = Counter(
            "streamrec_flow_messages_out_total",
            "Messages produced, per destination topic.",
            ["topic"],
            registry=registry,
        )
        self.rejects = Counter(
            "streamrec_flow_rejects_total",
            "Messages refused and sent to the DLQ, by reason.",
            ["reason"],
            registry=registry,
        )
        self.duplicates = Counter(
            "streamrec_flow_duplicates_total",
            "Events whose event_id was seen before.",
            registry=registry,
        )
        self.late_events = Counter(
            "streamrec_flow_late_events_total",
            "Events older than the lateness bound of their session, and impressions older "
            "than the exposure horizon.",
            registry=registry,
        )
        self.exposure_outcomes = Counter(
            "streamrec_flow_exposure_outcomes_total",
            "Impressions whose outcome closed, by whether a shown item was clicked.",
            ["outcome"],
            registry=registry,
        )
        self.sessions_written = Counter(
            "streamrec_flow_sessions_written_total", "Session hashes written.", registry=registry
        )
        self.sessions_evicted = Counter(
            "streamrec_flow_sessions_evicted_total",
            "Idle sessions dropped from flow state.",
            registry=registry,
        )
        self.redis_commands = Counter(
            "streamrec_flow_redis_commands_total",
            "Redis commands sent (all in pipelines).",
            registry=registry,
        )
        self.redis_write = Histogram(
            "streamrec_flow_redis_write_seconds",
            "Latency of one pipelined Redis write (one per output batch).",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.messages_refused = Counter(
            "streamrec_flow_messages_refused_total",
            "Messages the producer or broker refused as too large: logged and dropped (a bug).",
            ["topic"],
            registry=registry,
        )
        self.resyncs = Counter(
            "streamrec_flow_resyncs_total",
            "State written to Redis again in full after Redis lost data, per kind of state.",
            ["state"],
            registry=registry,
        )
        self.resync_entries = Counter(
            "streamrec_flow_resync_entries_total",
            "Sessions, popularity scores and item categories those re-syncs wrote.",
            ["state"],
            registry=registry,
        )
        self.topic_resets = Counter(
            "streamrec_flow_topic_resets_total",
            "Input partitions found emptied under the flow's position, read again from the start.",
            ["topic"],
            registry=registry,
        )
        self.popular_items = Gauge(
            "streamrec_flow_popular_items",
            "Items with a popularity score in state.",
            registry=registry,
        )
        self.freshness = BatchHistogram(
            "streamrec_flow_freshness_seconds",
            "Produce time of an event to the acknowledged Redis write of its session.",
            FRESHNESS_BUCKETS_S,
        )
        self.in_flow = BatchHistogram(
            "streamrec_flow_in_flow_seconds",
            "Time from the flow reading an event off Kafka to the acknowledged Redis write.",
            FRESHNESS_BUCKETS_S,
        )
        registry.register(self.freshness)
        registry.register(self.in_flow)
