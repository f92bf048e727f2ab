"""One load run against a running loop: replay traffic, drive serving, measure everything.

The loop (flow, learner, drift monitor, serving) must already run at the configured
addresses: in a deployment it is the system under test; the demo starts it itself.
While recorded traffic is replayed at a fixed rate or N x real time, a simulated shop
(a separate process) asks serving for recommendations for live sessions at a fixed
request rate, and the loop's Prometheus endpoints are sampled every second. After the
replay the run waits (with a deadline) for the flow and the learner to drain, then turns
what it saw into a ``RunRecord`` and the SLO measurements.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from loadtest.experiment_report import OutcomeTally, experiment_report
from loadtest.prometheus_scrape import Scrape, bucket_delta, histogram_quantile, scrape
from loadtest.run_report import RunRecord, Series
from loadtest.traffic_replay import ReplayReport, replay
from streamrec.events import Event, EventLimits
from streamrec.kafka_clients import topic_size
from streamrec.loop_processes import MetricsEndpoints
from streamrec.recorded_events import Record, read_recorded
from streamrec.redis_connection import RedisClient, connect_redis
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings
from streamrec.topics import Topics

FLOW_EVENTS_IN = "streamrec_flow_events_in_total"
FLOW_MESSAGES_OUT = "streamrec_flow_messages_out_total"
FLOW_REJECTS = "streamrec_flow_rejects_total"
FLOW_FRESHNESS = "streamrec_flow_freshness_seconds"
LEARNER_EXAMPLES = "streamrec_learner_examples_total"
LEARNER_EVENT_TO_WEIGHTS = "streamrec_learner_event_to_weights_seconds"
LEARNER_VERSION = "streamrec_learner_model_version"
# One observation per example message, when a version holding it is published.
LEARNER_PUBLISHED = LEARNER_EVENT_TO_WEIGHTS + "_count"


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What to replay and how hard to drive serving."""

    source: Path
    since_ms: int | None = None
    speed: float | None = None
    rate: float | None = None
    limit: int | None = None
    shop_rate: float = 50.0
    drain_timeout_s: float = 60.0


@dataclass(slots=True)
class _Samples:
    times: list[float] = field(default_factory=list)
    scrapes: dict[str, list[Scrape | None]] = field(default_factory=dict)


class MetricsSampler:
    """Scrapes every endpoint once per ``interval_s`` in a background thread."""

    def __init__(self, endpoints: dict[str, str | None], interval_s: float = 1.0) -> None:
        self._endpoints = {name: url for name, url in endpoints.items() if url}
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples = _Samples(scrapes={name: [] for name in self._endpoints})
        self._started = time.monotonic()

    def _run(self) -> None:
        while True:
            self.samples.times.append(time.monotonic() - self._started)
            for name, url in self._endpoints.items():
                self.samples.scrapes[name].append(scrape(url))
            if self._stop.wait(self._interval_s):
                return

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> _Samples:
        self._stop.set()
        self._thread.join(10)
        return self.samples


def _since(records: Iterator[Record], since_ms: int | None) -> Iterator[Record]:
    for record in records:
        if since_ms is None or not isinstance(record, Event) or record.ts >= since_ms:
            yield record


def counter_rate(samples: _Samples, endpoint: str, name: str) -> Series:
    """Per-interval rate of a counter (restarts of the process read as gaps, not spikes)."""
    series: Series = []
    scrapes = samples.scrapes.get(endpoint, [])
    for i in range(1, len(scrapes)):
        before, after = scrapes[i - 1], scrapes[i]
        if before is None or after is None:
            continue
        delta = after.value(name) - before.value(name)
        elapsed = samples.times[i] - samples.times[i - 1]
        if delta >= 0 and elapsed > 0:
            series.append((round(samples.times[i], 2), delta / elapsed))
    return series


def quantile_series(samples: _Samples, endpoint: str, name: str, q: float = 0.99) -> Series:
    """``histogram_quantile(q, increase(...))`` per interval, in milliseconds."""
    series: Series = []
    scrapes = samples.scrapes.get(endpoint, [])
    for i in range(1, len(scrapes)):
        before, after = scrapes[i - 1], scrapes[i]
        if before is None or after is None or name not in after.buckets:
            continue
        value = histogram_quantile(q, bucket_delta(after.buckets[name], before.buckets.get(name)))
        if not math.isnan(value):
            series.append((round(samples.times[i], 2), value * 1000))
    return series


def run_quantile_ms(samples: _Samples, endpoint: str, name: str, q: float = 0.99) -> float:
    """The quantile over the whole run (first to last good scrape), in milliseconds."""
    good = [s for s in samples.scrapes.get(endpoint, []) if s is not None and name in s.buckets]
    if not good:
        return math.nan
    first = good[0].buckets[name] if len(good) > 1 else None
    return histogram_quantile(q, bucket_delta(good[-1].buckets[name], first)) * 1000


def last_value(samples: _Samples, endpoint: str, name: str) -> float:
    for sample in reversed(samples.scrapes.get(endpoint, [])):
        if sample is not None:
            return sample.value(name)
    return math.nan


def consumer_lag(settings: Settings, topic: str, group: str) -> int:
    """Messages on ``topic`` not yet committed by ``group``."""
    consumer = Consumer(settings.kafka.client_config() | {"group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        assigned = [TopicPartition(topic, p) for p in partitions]
        committed = consumer.committed(assigned, timeout=10)
        lag = 0
        for part in committed:
            high = consumer.get_watermark_offsets(part, timeout=10)[1]
            lag += max(0, high - max(part.offset, 0))
        return lag
    finally:
        consumer.close()


@dataclass(frozen=True, slots=True)
class DrainMarks:
    """The loop's counters a drain compares: events the flow read, training examples it
    emitted, and example messages the learner's published versions hold (one
    event-to-weights observation each, at the publication)."""

    flow_in: float = 0.0
    examples_out: float = 0.0
    examples_published: float = 0.0

    @classmethod
    def of(cls, flow: Scrape | None, learner: Scrape | None, examples_topic: str) -> DrainMarks:
        return cls(
            flow_in=flow.value(FLOW_EVENTS_IN) if flow else 0.0,
            examples_out=flow.value(FLOW_MESSAGES_OUT, topic=examples_topic) if flow else 0.0,
            examples_published=learner.value(LEARNER_PUBLISHED) if learner else 0.0,
        )

    def published_since(self, before: DrainMarks) -> bool:
        """Versions hold every example emitted since ``before``."""
        emitted = self.examples_out - before.examples_out
        return self.examples_published - before.examples_published >= emitted


def _wait_drained(
    settings: Settings,
    endpoints: MetricsEndpoints,
    before: DrainMarks,
    produced: int,
    timeout_s: float,
) -> None:
    """Until the flow has consumed what was produced and the learner has published it.

    The learner is caught up when versions hold every example the flow emitted during the
    run (``DrainMarks.published_since``). The committed lag alone cannot say so: a
    consumer group that has not committed yet reads as no lag where the broker's high
    watermark undercounts (tansu's can); it is the fallback without metrics endpoints.
    """
    deadline = time.monotonic() + timeout_s
    topic = Topics.from_settings(settings.kafka).training_examples
    while time.monotonic() < deadline:
        flow = scrape(endpoints.flow) if endpoints.flow else None
        flow_done = flow is None or flow.value(FLOW_EVENTS_IN) - before.flow_in >= produced
        if flow is not None and endpoints.learner:
            learner = scrape(endpoints.learner)
            now = DrainMarks.of(flow, learner, topic)
            learner_done = learner is not None and now.published_since(before)
        else:
            lag = consumer_lag(settings, topic, settings.learner.consumer_group)
            learner_done = lag <= settings.learner.batch_size
        if flow_done and learner_done:
            return
        time.sleep(0.5)


def start_shop(rate: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "loadtest.shop_simulator", "--rate", str(rate)],
        stdout=subprocess.PIPE,
    )


def stop_shop(process: subprocess.Popen[bytes]) -> dict[str, object]:
    process.terminate()
    out, _ = process.communicate(timeout=60)
    lines = out.decode().strip().splitlines()
    return orjson.loads(lines[-1]) if lines else {}


def run_load(
    settings: Settings, plan: LoadPlan, name: str, progress: bool = True
) -> tuple[RunRecord, dict[str, float], ReplayReport]:
    """Replay ``plan.source`` through the running loop; return the record and SLO inputs."""
    endpoints = MetricsEndpoints.from_settings(settings)
    topics = Topics.from_settings(settings.kafka)
    keys = RedisKeys(settings.redis.key_prefix)
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    alerts_before = client.xlen(keys.alerts)
    before = DrainMarks.of(
        scrape(endpoints.flow) if endpoints.flow else None,
        scrape(endpoints.learner) if endpoints.learner else None,
        topics.training_examples,
    )
    dlq_before = topic_size(settings.kafka, topics.events_dlq)
    sampler = MetricsSampler(endpoints.as_dict())
    sampler.start()
    shop = start_shop(plan.shop_rate)
    started = time.time()
    records = _since(
        read_recorded(plan.source, EventLimits.from_settings(settings.events)), plan.since_ms
    )
    report = replay(
        records,
        settings.kafka,
        topics,
        rate=plan.rate,
        speed=plan.speed,
        limit=plan.limit,
        progress=progress,
    )
    _wait_drained(settings, endpoints, before, report.produced, plan.drain_timeout_s)
    shop_result = stop_shop(shop)
    samples = sampler.stop()
    dlq = topic_size(settings.kafka, topics.events_dlq) - dlq_before
    lag = consumer_lag(settings, topics.training_examples, settings.learner.consumer_group)
    flow_consumed = last_value(samples, "flow", FLOW_EVENTS_IN) - before.flow_in
    flow_lag = max(0.0, report.produced - flow_consumed) if not math.isnan(flow_consumed) else 0
    alerts = _alerts(client, keys, alerts_before, started)
    measured = {
        "freshness_p99_ms": run_quantile_ms(samples, "flow", FLOW_FRESHNESS),
        "event_to_weights_p99_ms": run_quantile_ms(samples, "learner", LEARNER_EVENT_TO_WEIGHTS),
        "serving_p99_ms": float(shop_result.get("p99_ms") or math.nan),
        "serving_error_rate": _ratio(shop_result.get("errors", 0), shop_result.get("requests", 0)),
        "dlq_rate": _ratio(dlq, report.produced),
        "consumer_lag": float(lag + flow_lag),
    }
    serving_series = shop_result.get("series", [])
    record = RunRecord(
        name=name,
        summary={
            "events produced": report.produced,
            "lines rejected at replay": sum(report.rejected.values()),
            "replay events/s": round(report.produced / report.elapsed_s, 1)
            if report.elapsed_s
            else math.nan,
            "dead letters": dlq,
            "training examples learned": last_value(samples, "learner", LEARNER_EXAMPLES),
            "model version at end": last_value(samples, "learner", LEARNER_VERSION),
            "drift alerts": len(alerts),
            "serving requests": shop_result.get("requests", 0),
            "serving errors": shop_result.get("errors", 0),
            "serving p50 ms": shop_result.get("p50_ms", math.nan),
            "serving p99 ms": shop_result.get("p99_ms", math.nan),
            "served HR@20 (next click in list shown)": shop_result.get("served_hr", math.nan),
        }
        | {name: round(value, 3) for name, value in measured.items()},
        events_per_s=counter_rate(samples, "flow", FLOW_EVENTS_IN),
        freshness_p99_ms=quantile_series(samples, "flow", FLOW_FRESHNESS),
        event_to_weights_p99_ms=quantile_series(samples, "learner", LEARNER_EVENT_TO_WEIGHTS),
        serving_p99_ms=[(float(p["t_s"]), float(p["p99_ms"])) for p in serving_series],
        serving_rps=[(float(p["t_s"]), float(p["rps"])) for p in serving_series],
        model_versions=_gauge_series(samples, "learner", LEARNER_VERSION),
        alerts=alerts,
        experiments=_experiments(shop_result, settings.experiment.control),
    )
    return record, measured, report


def _experiments(shop_result: dict[str, Any], control: str) -> dict[str, Any]:
    """Per-arm CTR and served HR of the lists the shop was served (see shop_simulator);
    conversion is left out: the shop does not follow purchases."""
    outcomes = shop_result.get("outcomes")
    if not outcomes:
        return {}
    return experiment_report(OutcomeTally.from_dict(outcomes), control, ("ctr", "served_hr"))


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _gauge_series(samples: _Samples, endpoint: str, name: str) -> Series:
    return [
        (round(t, 2), s.value(name))
        for t, s in zip(samples.times, samples.scrapes.get(endpoint, []), strict=False)
        if s is not None
    ]


def _alerts(
    client: RedisClient, keys: RedisKeys, skip: int, started: float
) -> list[dict[str, object]]:
    alerts = []
    for _, fields in client.xrange(keys.alerts)[skip:]:
        decoded = {k.decode(): v.decode() for k, v in fields.items()}
        alert = orjson.loads(decoded["alert"]) if "alert" in decoded else decoded
        detected = float(alert.get("detected_at_ms", started * 1000)) / 1000
        alert["t_s"] = round(max(0.0, detected - started), 2)
        alerts.append(alert)
    return alerts
