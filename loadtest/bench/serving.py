"""``streamrec bench serving``: /recommend under load, with hot swaps, against a baseline.

What runs, all in one command:

1. The sample's sessions are replayed through the flow's own feature code
   (``flows.session_state``) and written to Redis as the flow would (session hashes,
   popularity zset, item categories), under a private key prefix.
2. A real model (``online_models``' architecture and scorer; random weights, since the
   cost of scoring does not depend on the values) over the sample's items is published
   to a private weight registry, and ``streamrec serve`` is started with ``workers``
   processes.
3. A separate load-generator process (``loadtest.http_load``) drives ``/healthz``
   (the baseline: a trivial endpoint on the same stack) and then ``/recommend`` top-20 for
   the sample's sessions at a fixed concurrency, while this process publishes ``swaps``
   new versions at even intervals.
4. The same is repeated briefly with a synthetic 1,000,000-item catalog at low
   concurrency to give ``p99_ms_1m_items``, while this process publishes deltas as the
   online learner does (``large_swaps`` of them, each moving ``large_delta_rows`` rows
   drawn at random, repeats once, and adding ``large_delta_new_items`` items: the rows a
   delta holds, median, are ``delta_rows_1m_items``); the servers' logs give the time each
   worker took to load and build those versions (``swap_load_ms_*_1m_items``). Where the
   scorer ranks int4 shortlists there (``SessionScorer.shortlists``), this process then
   measures their recall against the exact pass on a sample of those sessions
   (``recall_at_20_1m_items``).

Everything it wrote (Redis keys, weight files) is removed at the end.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rich.console import Console

from flows.session_state import SessionState
from loadtest.bench.server_process import (
    LOAD_WARMUP_S,
    cpu_bound_rps,
    mean_batch_size,
    run_load,
    serve_env,
    wait_ready,
)
from serving.server import spawn_server, stop_server
from streamrec.events import Event, EventLimits
from streamrec.kafka_clients import broker_answers, ensure_topics
from streamrec.local_services import free_port
from streamrec.recorded_events import read_recorded
from streamrec.redis_connection import RedisClient, connect_redis
from streamrec.redis_keys import RedisKeys
from streamrec.session_features import encode_session_features
from streamrec.settings import Settings
from streamrec.topics import Topics

console = Console(stderr=True)
SWAP_WINDOW_S = (-0.5, 2.0)  # errors this close to a publish count as failed during a swap


@dataclass(frozen=True, slots=True)
class BenchConfig:
    duration_s: float = 20.0
    concurrency: int = 8
    workers: int = 1
    swaps: int = 12
    k: int = 20
    large_items: int = 1_000_000
    large_concurrency: int = 2
    large_duration_s: float = 10.0
    large_sessions: int = 2000
    large_swaps: int = 10  # deltas published during the 1M-item run
    large_delta_rows: int = 3000  # rows each of them moves...
    large_delta_new_items: int = 50  # ... and items it adds
    recall_sessions: int = 256


@dataclass(frozen=True, slots=True)
class SampleData:
    """What the sample gives the benchmark besides session hashes: catalog, popularity."""

    item_ids: list[str]
    categories: dict[str, str]
    popularity: Counter[str]


def load_sample(settings: Settings) -> tuple[SampleData, list[tuple[str, dict[str, bytes]]]]:
    """Replay the sample through the flow's session state; return data and session hashes."""
    states: dict[str, SessionState] = {}
    categories: dict[str, str] = {}
    popularity: Counter[str] = Counter()
    item_order: dict[str, None] = {}
    history_len = settings.flow.history_len
    lateness_ms = int(settings.flow.lateness_s * 1000)
    for record in read_recorded(settings.data_dir, EventLimits.from_settings(settings.events)):
        if not isinstance(record, Event):
            continue
        state = states.setdefault(record.session_id, SessionState())
        if not state.record(record.event_id):
            continue
        if record.type == "click":
            state.apply_click(
                record.ts, record.item_id, record.category, history_len, lateness_ms,
                record.event_id,
            )  # fmt: skip
            item_order.setdefault(record.item_id, None)
            popularity[record.item_id] += 1
            if record.category:
                categories[record.item_id] = record.category
        elif record.type == "purchase":
            state.apply_purchase(record.ts, record.item_id, history_len, lateness_ms)
    hashes = [
        (sid, encode_session_features(state.features()))
        for sid, state in states.items()
        if state.items
    ]
    data = SampleData(list(item_order), categories, popularity)
    return data, hashes


def write_features(
    client: RedisClient,
    keys: RedisKeys,
    hashes: list[tuple[str, dict[str, bytes]]],
    categories: dict[str, str],
    popularity: Counter[str],
) -> None:
    """Write what the flow would have written, in pipelined chunks."""
    pipe = client.pipeline(transaction=False)
    for count, (session_id, fields) in enumerate(hashes, 1):
        pipe.hset(keys.session(session_id), mapping=fields)
        if count % 2000 == 0:
            pipe.execute()
    items = list(categories.items())
    for start in range(0, len(items), 5000):
        pipe.hset(keys.item_categories, mapping=dict(items[start : start + 5000]))
    top = dict(popularity.most_common(5000))
    if top:
        pipe.zadd(keys.popular, {item: float(count) for item, count in top.items()})
    pipe.execute()


def delete_prefix(client: RedisClient, prefix: str) -> None:
    keys = list(client.scan_iter(f"{prefix}:*", count=2000))
    for start in range(0, len(keys), 2000):
        client.delete(*keys[start : start + 2000])


Publisher = Callable[[Any, np.random.Generator], None]  # (registry, rng): one new version


def publish_swaps(
    settings: Settings,
    publish: Publisher,
    count: int,
    every_s: float,
    stop: threading.Event,
    delay_s: float = LOAD_WARMUP_S + 0.5,
) -> list[float]:
    """Publish ``count`` versions with ``publish`` at ``delay_s + i * every_s``.

    The schedule is absolute (publishing takes time), and starts after the load
    generator's warm-up so every publish falls inside the measured window.
    """
    from online_models.registry.weight_registry import WeightRegistry

    registry = WeightRegistry(settings, connect_redis(settings.redis.redis_url.get_secret_value()))
    rng = np.random.default_rng(1)
    published: list[float] = []
    start = time.monotonic() + delay_s
    for number in range(1, count + 1):
        if stop.wait(max(0.0, start + number * every_s - time.monotonic())):
            break
        publish(registry, rng)
        published.append(time.monotonic())
    return published


def perturbed_snapshots(base: Any) -> Publisher:
    """Each version a full snapshot: ``base`` with every item row moved a little."""
    from online_models.model.weights import ITEM_TABLE

    def publish(registry: Any, rng: np.random.Generator) -> None:
        tensors = dict(base.tensors)
        noise = rng.standard_normal(tensors[ITEM_TABLE].shape).astype(np.float32) * 0.01
        tensors[ITEM_TABLE] = tensors[ITEM_TABLE] + noise
        registry.publish_snapshot(replace(base, tensors=tensors), source="bench")

    return publish


def learner_deltas(
    n_items: int, hidden: int, rows: int, new_items: int, moved: list[int] | None = None
) -> Publisher:
    """Each version a delta on the current one, as the online learner publishes: ``rows``
    random item rows drawn (repeats once) and ``new_items`` items added; each delta's
    count of rows is appended to ``moved``."""
    from online_models.model.weights import ITEM_BIAS, ITEM_TABLE, WeightDelta

    catalog = [n_items]

    def publish(registry: Any, rng: np.random.Generator) -> None:
        n = catalog[0]
        touched = np.concatenate([np.unique(rng.integers(0, n, rows)), np.arange(n, n + new_items)])
        if moved is not None:
            moved.append(len(touched))
        delta = WeightDelta(
            version=0,  # assigned by the registry
            parent=registry.current_version(),
            start_row=n,
            new_item_ids=[f"bench-new-{row}" for row in range(n, n + new_items)],
            rows=touched,
            row_values={
                ITEM_TABLE: (rng.standard_normal((len(touched), hidden)) / hidden**0.5).astype(
                    np.float32
                ),
                ITEM_BIAS: np.zeros(len(touched), dtype=np.float32),
            },
            dense={},
        )
        registry.publish_delta(delta, source="bench")
        catalog[0] = n + new_items

    return publish


def failed_during_swaps(load: dict[str, Any], publish_times: list[float]) -> int:
    start = load["measure_started_monotonic"]
    before, after = SWAP_WINDOW_S
    return sum(
        1
        for t in load["error_times_s"]
        if any(p + before <= start + t <= p + after for p in publish_times)
    )


def run_serving_benchmark(settings: Settings, config: BenchConfig) -> dict[str, Any]:
    """Run the whole benchmark (see module docstring); return the JSON line's fields."""
    from online_models.model.recommender import random_weights
    from online_models.registry.weight_registry import WeightRegistry

    tag = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-bench-serving-"))
    settings = settings.model_copy(
        update={
            "redis": settings.redis.model_copy(update={"key_prefix": f"bench-serving-{tag}"}),
            "kafka": settings.kafka.model_copy(update={"topic_prefix": f"bench-{tag}-"}),
            "model": settings.model.model_copy(update={"store_dir": workdir / "models"}),
        }
    )
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    keys = RedisKeys(settings.redis.key_prefix)
    kafka_ok = broker_answers(settings.kafka)
    if kafka_ok:
        ensure_topics(settings.kafka, Topics.from_settings(settings.kafka).all())
    else:
        console.print("[yellow]no Kafka broker answers: impressions stay queued (dropped)")
    try:
        console.print("loading the sample's sessions through the flow's feature code...")
        sample, hashes = load_sample(settings)
        write_features(client, keys, hashes, sample.categories, sample.popularity)
        registry = WeightRegistry(settings, client)
        base = replace(
            random_weights(len(sample.item_ids), settings.model), item_ids=sample.item_ids
        )
        registry.publish_snapshot(base, source="bench")
        rng = random.Random(7)
        sessions = [sid for sid, _ in hashes]
        rng.shuffle(sessions)
        targets = [f"/recommend?session_id={sid}&k={config.k}" for sid in sessions]
        port = free_port()
        server = spawn_server(serve_env(settings, config.workers), port, workdir / "server.log")
        try:
            wait_ready(port, 60, workdir / "server.log")
            console.print(f"baseline: /healthz for {config.duration_s / 2:.0f}s...")
            baseline = run_load(
                port, ["/healthz"], config.concurrency, config.duration_s / 2, workdir, server.pid
            )
            console.print(f"/recommend for {config.duration_s:.0f}s with {config.swaps} swaps...")
            stop = threading.Event()
            publish_times: list[float] = []
            every_s = config.duration_s / (config.swaps + 1)
            publisher = threading.Thread(
                target=lambda: publish_times.extend(
                    publish_swaps(settings, perturbed_snapshots(base), config.swaps, every_s, stop)
                )
            )
            publisher.start()
            load = run_load(
                port, targets, config.concurrency, config.duration_s, workdir, server.pid
            )
            stop.set()
            publisher.join()
            batch_size = mean_batch_size(port)
        finally:
            stop_server(server)
        large = (
            run_large_catalog(settings, config, client, keys, workdir) if config.large_items else {}
        )
        return {
            "items": len(sample.item_ids),
            "sessions": len(hashes),
            "k": config.k,
            "workers": config.workers,
            "concurrency": config.concurrency,
            "duration_s": config.duration_s,
            "rps": load["rps"],
            "p50_ms": load["p50_ms"],
            "p90_ms": load["p90_ms"],
            "p99_ms": load["p99_ms"],
            "max_ms": load["max_ms"],
            "requests": load["requests"],
            "errors": load["errors"],
            "swaps": len(publish_times),
            "versions_seen_by_clients": len(load["version_first_seen_s"]),
            "failed_during_swap": failed_during_swaps(load, publish_times),
            "baseline_rps": baseline["rps"],
            "baseline_p99_ms": baseline["p99_ms"],
            "ratio": round(load["rps"] / baseline["rps"], 3) if baseline["rps"] else None,
            "mean_score_batch": batch_size,
            "server_cpu_ms_per_request": load["server_cpu_ms_per_request"],
            "client_cpu_ms_per_request": load["client_cpu_ms_per_request"],
            "cpu_bound_rps_2_cores": cpu_bound_rps(load),
            "baseline_cpu_bound_rps_2_cores": cpu_bound_rps(baseline),
            "impressions_to_kafka": kafka_ok,
            **large,
            "stack": "granian (ASGI) + starlette",
            "cpus": os.cpu_count(),
            "error_samples": load["error_samples"][:3],
        }
    finally:
        delete_prefix(client, settings.redis.key_prefix)
        shutil.rmtree(workdir, ignore_errors=True)


def run_large_catalog(
    settings: Settings, config: BenchConfig, client: RedisClient, keys: RedisKeys, workdir: Path
) -> dict[str, Any]:
    """p99 of top-20 over a synthetic catalog of ``large_items`` items."""
    from online_models.model.recommender import random_weights
    from online_models.registry.weight_registry import WeightRegistry

    console.print(f"synthetic catalog of {config.large_items:,} items...")
    large_settings = settings.model_copy(
        update={
            "redis": settings.redis.model_copy(
                update={"key_prefix": settings.redis.key_prefix + "-1m"}
            ),
            "model": settings.model.model_copy(update={"store_dir": workdir / "models-1m"}),
        }
    )
    large_keys = RedisKeys(large_settings.redis.key_prefix)
    try:
        weights = random_weights(config.large_items, settings.model, seed=3)
        WeightRegistry(large_settings, client).publish_snapshot(weights, source="bench")
        rng = np.random.default_rng(5)
        pipe = client.pipeline(transaction=False)
        targets = []
        histories: list[tuple[str, ...]] = []
        for number in range(config.large_sessions):
            clicks = rng.integers(0, config.large_items, size=int(rng.integers(1, 10)))
            state = SessionState()
            for offset, row in enumerate(clicks.tolist()):
                state.apply_click(
                    offset, f"item-{row}", None, settings.flow.history_len, 0, f"e{offset}"
                )
            features = state.features()
            pipe.hset(large_keys.session(f"l{number}"), mapping=encode_session_features(features))
            targets.append(f"/recommend?session_id=l{number}&k={config.k}")
            histories.append(features.items)
        pipe.execute()
        port = free_port()
        server = spawn_server(
            serve_env(large_settings, config.workers), port, workdir / "server-1m.log", 180
        )
        try:
            wait_ready(port, 180, workdir / "server-1m.log")
            stop = threading.Event()
            publish_times: list[float] = []
            moved: list[int] = []
            deltas = learner_deltas(
                config.large_items, settings.model.hidden_size, config.large_delta_rows,
                config.large_delta_new_items, moved,
            )  # fmt: skip
            every_s = config.large_duration_s / (config.large_swaps + 1)
            publisher = threading.Thread(
                target=lambda: publish_times.extend(
                    publish_swaps(large_settings, deltas, config.large_swaps, every_s, stop)
                )
            )
            publisher.start()
            load = run_load(
                port, targets, config.large_concurrency, config.large_duration_s, workdir,
                server.pid,
            )  # fmt: skip
            stop.set()
            publisher.join()
            batch_size = mean_batch_size(port)
        finally:
            stop_server(server)
        swap_ms = swap_load_ms(workdir / "server-1m.log")
        swap_cpu_ms = swap_load_ms(workdir / "server-1m.log", "load_cpu_ms")
        recall = shortlist_recall(weights, settings, histories[: config.recall_sessions], config.k)
        return {
            "items_1m": config.large_items,
            "concurrency_1m_items": config.large_concurrency,
            "rps_1m_items": load["rps"],
            "p50_ms_1m_items": load["p50_ms"],
            "p99_ms_1m_items": load["p99_ms"],
            "errors_1m_items": load["errors"],
            "mean_score_batch_1m_items": batch_size,
            "server_cpu_ms_per_request_1m_items": load["server_cpu_ms_per_request"],
            "swaps_1m_items": len(publish_times),
            "delta_rows_1m_items": _quantile([float(m) for m in moved], 0.5),
            "versions_seen_by_clients_1m_items": len(load["version_first_seen_s"]),
            "failed_during_swap_1m_items": failed_during_swaps(load, publish_times),
            "swap_load_ms_p50_1m_items": _quantile(swap_ms, 0.5),
            "swap_load_ms_max_1m_items": max(swap_ms, default=None),
            "swap_load_cpu_ms_p50_1m_items": _quantile(swap_cpu_ms, 0.5),
            **({} if recall is None else {"recall_at_20_1m_items": recall}),
        }
    finally:
        delete_prefix(client, large_keys.prefix)


def shortlist_recall(
    weights: Any, settings: Settings, histories: list[tuple[str, ...]], k: int
) -> float | None:
    """Recall@k of the served top K against the exact pass, None where serving is exact.

    Builds from ``weights`` the scorer the server builds (``settings.model``, on CPU) and
    compares its ``top_k_batch`` answers with the exact top k of ``score_batch`` for the same
    ``histories`` (click-only sessions: nothing is excluded, as in the served requests).
    A served item counts when its exact score reaches the exact k-th best: bfloat16
    scores tie often, and any tied item is a correct answer.
    """
    from online_models.model.scorer import SessionScorer

    scorer = SessionScorer.from_weights(weights, settings.model)
    if not scorer.shortlists:
        return None
    console.print(f"recall of the int4 shortlists over {len(histories)} sessions...")
    hits = 0
    for start in range(0, len(histories), 8):
        batch = histories[start : start + 8]
        exact = scorer.score_batch(batch)
        for line, (rows, _) in zip(exact, scorer.top_k_batch(batch, k), strict=True):
            hits += int(np.sum(line[rows] >= np.partition(line, -k)[-k]))
    return round(hits / (k * len(histories)), 4)


def swap_load_ms(log_path: Path, field: str = "load_ms") -> list[float]:
    """Each worker's time to load and build every version after its first, in ms (the
    server's ``model_swapped`` log lines): ``load_ms`` wall time, ``load_cpu_ms`` the
    loader thread's CPU."""
    times = []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"model_swapped"' in line:
            record = orjson.loads(line)
            if record.get("source") != "startup":
                times.append(float(record[field]))
    return times


def _quantile(values: list[float], q: float) -> float | None:
    return round(float(np.quantile(values, q)), 1) if values else None
