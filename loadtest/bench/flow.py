"""``streamrec bench flow``: end-to-end throughput against the source ceiling, then freshness.

Phase 1 produces N events (the sample, repeated with fresh event and session ids when N is
larger) to private topics, then runs in this process, one worker, recovery on, ``rounds``
times each (medians reported):

- the *ceiling*: the same ``BatchKafkaSource`` over the same topics into a null sink;
- the *flow*: the full dataflow into the real Redis and Kafka, to the end of the topics;
  with ``workers`` > 1, as that many processes of one worker each (a Bytewax cluster, as
  ``streamrec flow -i/-a``: worker threads of one process share its GIL, processes do not).

Phase 2 starts the flow tailing fresh topics, replays the sample from a separate process
at half the measured throughput, and reports freshness (produce time to Redis ack) of
every event produced after the first ``WARMUP_S`` (while the replay's producer and the
flow's consumers connect, the first events wait up to half a second: that is start-up,
not steady state; ``freshness_p99_all_ms`` includes them). Private topics and keys are
deleted at the end.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from itertools import islice
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import bytewax.operators as op
import numpy as np
import orjson
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig
from bytewax.testing import cluster_main, run_main
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from flows.dataflow import build_flow, source_for
from flows.event_routing import SourceBatch
from flows.metrics import FlowMetrics
from flows.process_tuning import tune_flow_process
from flows.publisher import FreshnessLog
from flows.runner import ensure_recovery_dir
from loadtest.traffic_replay import replay
from streamrec.events import Event, EventLimits
from streamrec.kafka_clients import ensure_topics
from streamrec.local_services import services_up
from streamrec.recorded_events import only_events, read_yoochoose
from streamrec.redis_connection import connect_redis
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings
from streamrec.topics import Topics

WARMUP_S = 1.0
FLOW_TIMEOUT_S = 600.0


class _CountingPartition(StatelessSinkPartition[SourceBatch]):
    def __init__(self, counts: list[int]) -> None:
        self._counts = counts

    def write_batch(self, items: list[SourceBatch]) -> None:
        self._counts[0] += sum(len(batch.messages) for batch in items)


class NullSink(DynamicSink[SourceBatch]):
    """Counts messages and drops them: the ceiling of what the source can deliver."""

    def __init__(self) -> None:
        self.counts = [0]

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountingPartition:
        return _CountingPartition(self.counts)


def repeated_sample(settings: Settings, count: int) -> Iterator[Event]:
    """``count`` events of the sample; each further pass gets fresh event and session ids."""
    limits = EventLimits.from_settings(settings.events)
    made = 0
    for round_no in range(1_000_000):
        salt = f"bench{round_no}" if round_no else ""
        for event in only_events(read_yoochoose(settings.data_dir, limits, salt)):
            if round_no:
                event = event._replace(session_id=f"{event.session_id}r{round_no}")
            yield event
            made += 1
            if made >= count:
                return
    return


def _isolated(settings: Settings, tag: str, stop_at_end: bool, recovery_dir: Path) -> Settings:
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"topic_prefix": f"bench-{tag}-"}),
            "redis": settings.redis.model_copy(update={"key_prefix": f"bench-{tag}"}),
            "flow": settings.flow.model_copy(
                update={
                    "stop_at_end": stop_at_end,
                    "metrics_port": 0,
                    "recovery_dir": recovery_dir,
                }
            ),
        }
    )


def _run(flow: Dataflow, settings: Settings) -> float:
    """Run ``flow`` to its end with recovery on; return the seconds it took."""
    ensure_recovery_dir(settings.flow.recovery_dir, settings.flow.recovery_partitions)
    started = time.perf_counter()
    run_main(
        flow,
        epoch_interval=timedelta(seconds=settings.flow.snapshot_interval_s),
        recovery_config=RecoveryConfig(settings.flow.recovery_dir),
    )
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cluster_worker(
    settings: Settings,
    addresses: list[str],
    process_id: int,
    start: Barrier,
    counts: Queue[tuple[float, float]],
) -> None:
    """One process of a flow cluster: build, wait for the others, run to the end, report
    the Redis counters."""
    tune_flow_process()
    registry = CollectorRegistry()
    flow = build_flow(settings, FlowMetrics(registry))
    start.wait(120)
    cluster_main(
        flow,
        addresses,
        process_id,
        epoch_interval=timedelta(seconds=settings.flow.snapshot_interval_s),
        recovery_config=RecoveryConfig(settings.flow.recovery_dir),
    )
    counts.put(
        (
            _counter(registry, "streamrec_flow_redis_commands_total"),
            _counter(registry, "streamrec_flow_redis_write_seconds_count"),
        )
    )


def _run_cluster(settings: Settings, workers: int) -> tuple[float, float, float]:
    """Run the flow to its end as ``workers`` processes of one worker each; seconds from
    all of them built to all of them done, Redis commands and round trips."""
    ensure_recovery_dir(settings.flow.recovery_dir, settings.flow.recovery_partitions)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(workers + 1)
    counts = context.Queue()
    addresses = [f"127.0.0.1:{_free_port()}" for _ in range(workers)]
    processes = [
        context.Process(
            target=_cluster_worker, args=(settings, addresses, index, start, counts), daemon=True
        )
        for index in range(workers)
    ]
    for process in processes:
        process.start()
    start.wait(120)
    started = time.perf_counter()
    reports: list[tuple[float, float]] = []
    while len(reports) < workers:
        try:
            reports.append(counts.get(timeout=1.0))
        except queue.Empty:
            failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if failed or time.perf_counter() - started > FLOW_TIMEOUT_S:
                raise RuntimeError(f"flow cluster failed (exit codes {failed})") from None
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join(30)
    return elapsed, sum(c for c, _ in reports), sum(w for _, w in reports)


def _counter(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


def _cleanup(settings: Settings) -> None:
    topics = Topics.from_settings(settings.kafka)
    AdminClient(settings.kafka.client_config()).delete_topics(list(topics.all()))
    _cleanup_keys(settings)


def _cleanup_keys(settings: Settings) -> None:
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    keys = list(client.scan_iter(f"{settings.redis.key_prefix}:*", count=5000))
    for start in range(0, len(keys), 5000):
        client.delete(*keys[start : start + 5000])


SIZE_SAMPLE = 2000  # session hashes whose memory is measured


def session_bytes(settings: Settings) -> dict[str, float]:
    """Redis memory per session hash (``MEMORY USAGE`` of a sample: median and p99) and how
    many sessions the flow wrote: what the sizing guide multiplies out."""
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    keys = RedisKeys(settings.redis.key_prefix)
    names = list(islice(client.scan_iter(keys.session_pattern(), count=5000), SIZE_SAMPLE))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.memory_usage(name, samples=0)
    sizes = [size for size in pipe.execute() if size]
    sessions = sum(1 for _ in client.scan_iter(keys.session_pattern(), count=5000))
    return {
        "redis_sessions": sessions,
        "redis_bytes_per_session": float(np.median(sizes)) if sizes else math.nan,
        "redis_bytes_per_session_p99": float(np.percentile(sizes, 99)) if sizes else math.nan,
    }


def _log(message: str) -> None:
    sys.stderr.write(f"bench flow: {message}\n")


def measure_throughput(
    settings: Settings, events: int, rounds: int, work: Path, workers: int = 1
) -> dict[str, float]:
    """Phase 1: produce ``events``, then time the ceiling and the flow over them, ``rounds``
    times each (every flow round with its own keys and recovery, so each starts cold; the
    flow as ``workers`` processes); medians of the rates."""
    tag = uuid.uuid4().hex[:8]
    bench = _isolated(settings, f"{tag}a", True, work / "recovery-a")
    topics = Topics.from_settings(bench.kafka)
    ensure_topics(bench.kafka, topics.all())
    ceiling_rates: list[float] = []
    flow_rates: list[float] = []
    commands = writes = 0.0
    sizes: dict[str, float] = {}
    rounds_settings: list[Settings] = []
    try:
        _log(f"producing {events} events")
        report = replay(
            repeated_sample(settings, events), bench.kafka, topics, progress=sys.stderr.isatty()
        )
        produced = report.produced
        _log(f"produced {produced} in {report.elapsed_s:.1f}s")
        for round_no in range(rounds):
            ceiling_flow = Dataflow("streamrec_ceiling")
            null = NullSink()
            op.output("null", op.input("kafka_in", ceiling_flow, source_for(bench)), null)
            ceiling_s = _run(ceiling_flow, _for_round(bench, f"c{round_no}", work, 1))
            ceiling_rates.append(null.counts[0] / ceiling_s)
            run = _for_round(bench, f"f{round_no}", work, workers)
            rounds_settings.append(run)
            if workers > 1:
                flow_s, commands, writes = _run_cluster(run, workers)
            else:
                registry = CollectorRegistry()  # one per round: its counters are that round's
                flow_s = _run(build_flow(run, FlowMetrics(registry)), run)
                commands = _counter(registry, "streamrec_flow_redis_commands_total")
                writes = _counter(registry, "streamrec_flow_redis_write_seconds_count")
            flow_rates.append(round(produced / flow_s))
            sizes = session_bytes(run)
            _log(f"round {round_no}: ceiling {ceiling_rates[-1]:.0f}/s, flow {flow_rates[-1]}/s")
        return {
            "events": produced,
            "ceiling_per_s": statistics.median(ceiling_rates),
            "flow_per_s": statistics.median(flow_rates),
            "flow_per_s_all": flow_rates,
            "redis_commands": commands,
            "redis_round_trips": writes,
            **sizes,
        }
    finally:
        _cleanup(bench)
        for run in rounds_settings:
            _cleanup_keys(run)


def _for_round(bench: Settings, name: str, work: Path, workers: int) -> Settings:
    """``bench`` with its own Redis keys and recovery directory (same topics), and one
    output partition per worker."""
    return bench.model_copy(
        update={
            "redis": bench.redis.model_copy(
                update={"key_prefix": f"{bench.redis.key_prefix}-{name}"}
            ),
            "flow": bench.flow.model_copy(
                update={"recovery_dir": work / f"recovery-{name}", "publish_partitions": workers}
            ),
        }
    )


def measure_freshness(settings: Settings, rate: float, seconds: float, work: Path) -> dict:
    """Phase 2: the flow tails while another process replays at ``rate``; raw freshness."""
    tag = uuid.uuid4().hex[:8]
    bench = _isolated(settings, f"{tag}b", False, work / "recovery-b")
    topics = Topics.from_settings(bench.kafka)
    ensure_topics(bench.kafka, topics.all())
    log = FreshnessLog([])
    source = source_for(bench)
    flow = build_flow(bench, FlowMetrics(CollectorRegistry()), log, source)
    runner = threading.Thread(target=_run, args=(flow, bench), daemon=True)
    limit = max(1000, int(rate * seconds))
    try:
        runner.start()
        if not source.ready.wait(60):
            raise TimeoutError("flow did not start")
        env = os.environ | {
            "STREAMREC_TOPIC_PREFIX": bench.kafka.topic_prefix,
            "STREAMREC_BOOTSTRAP_SERVERS": bench.kafka.bootstrap_servers,
            "STREAMREC_DATA_DIR": str(settings.data_dir),
        }
        _log(f"freshness: replay {limit} events at {rate:.0f}/s")
        done = subprocess.run(
            [sys.executable, "-m", "cli", "replay", "--rate", f"{rate:.0f}"]
            + ["--limit", str(limit), "--salt", f"fresh{tag}"],
            env=env,
            capture_output=True,
            check=True,
            timeout=seconds * 10 + 60,
        )
        replayed = orjson.loads(done.stdout.strip().splitlines()[-1])
        source.stop.set()
        runner.join(120)
        produced, read, acked = log.take()
        freshness = acked - produced
        steady = produced >= produced.min() + WARMUP_S * 1000
        values = freshness[steady]
        in_flow = (acked - read)[steady]
        return {
            "freshness_events": int(values.size),
            "freshness_warmup_s": WARMUP_S,
            "freshness_rate_target": round(rate),
            "freshness_rate_actual": replayed["events_per_s"],
            "freshness_p50_ms": round(float(np.percentile(values, 50)), 2),
            "freshness_p99_ms": round(float(np.percentile(values, 99)), 2),
            "freshness_max_ms": round(float(values.max()), 2),
            "freshness_p99_all_ms": round(float(np.percentile(freshness, 99)), 2),
            "in_flow_p50_ms": round(float(np.percentile(in_flow, 50)), 2),
            "in_flow_p99_ms": round(float(np.percentile(in_flow, 99)), 2),
        }
    finally:
        source.stop.set()
        runner.join(60)
        _cleanup(bench)


def run_flow_benchmark(
    settings: Settings,
    events: int,
    freshness_s: float,
    rounds: int = 3,
    freshness_rate: float | None = None,
    workers: int = 1,
) -> dict[str, object]:
    """Both phases; one dict for the JSON line. ``freshness_rate`` replaces half the
    measured throughput as phase 2's rate (to see freshness below saturation). Phase 2
    runs one worker, at half the throughput per worker."""
    services_up(settings)
    tune_flow_process()
    with tempfile.TemporaryDirectory(prefix="streamrec-bench-flow-") as work_dir:
        work = Path(work_dir)
        throughput = measure_throughput(settings, events, rounds, work, workers)
        produced = throughput["events"]
        events_per_s = throughput["flow_per_s"]
        ceiling_per_s = throughput["ceiling_per_s"]
        rate = freshness_rate or events_per_s / workers / 2
        freshness = measure_freshness(settings, rate, freshness_s, work)
    return {
        "bench": "flow",
        "events": int(produced),
        "events_per_s": round(events_per_s),
        "ceiling_events_per_s": round(ceiling_per_s),
        "ratio": round(events_per_s / ceiling_per_s, 3),
        "rounds": rounds,
        "events_per_s_rounds": throughput["flow_per_s_all"],
        **freshness,
        "redis_ops_per_event": round(throughput["redis_commands"] / produced, 3),
        "redis_round_trips_per_event": round(throughput["redis_round_trips"] / produced, 5),
        "redis_sessions": throughput["redis_sessions"],
        "redis_bytes_per_session": throughput["redis_bytes_per_session"],
        "redis_bytes_per_session_p99": throughput["redis_bytes_per_session_p99"],
        "workers": workers,
        "events_per_s_per_worker": round(events_per_s / workers),
        "recovery": True,
        "snapshot_interval_s": settings.flow.snapshot_interval_s,
        "batch_size": settings.flow.batch_size,
        "state_shards": settings.flow.state_shards,
    }
