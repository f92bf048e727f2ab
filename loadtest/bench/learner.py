"""``streamrec bench learner``: head-update throughput, publish cost, event-to-weights latency.

1. **Throughput.** The sample's examples go through ``HeadLearner.learn`` in micro-batches
   of the configured size; the first quarter warms up (the item table grows to the
   sample's catalog), the rest is timed: ``examples_per_s`` and per-step p50/p99.
2. **Publishing.** Deltas (and every ``snapshot_every``-th a snapshot) after every
   ``publish_every_steps`` steps, into the real registry (Redis + a temporary store).
3. **Event to weights.** A ``Learner`` runs against the broker while a producer writes
   training examples at a fixed rate; for each example, the time from its produce
   timestamp to the moment the version holding it became current. This starts at the
   ``training-examples`` topic: the feature flow's own click-to-example latency (its
   freshness, measured by ``streamrec bench flow``) comes on top. The ``steady`` figures
   leave out examples produced in the first ``STARTUP_S`` seconds, which wait for the
   learner's first batches.

``--step-only`` (``learner_step.py``) times the step alone, without broker or Redis.

Everything uses unique topic and key prefixes and a temporary model store, and cleans up.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from loadtest.bench.learner_step import sample_examples
from online_models.learner.loop import Learner
from online_models.learner.micro_batch import HeadLearner
from online_models.model.covisitation import CovisitationRule
from online_models.model.device import pick_device, synchronize
from online_models.model.recommender import random_weights
from online_models.registry.weight_registry import WeightRegistry
from streamrec.kafka_clients import broker_answers, ensure_topics, make_producer
from streamrec.redis_connection import RedisClient, connect_redis
from streamrec.settings import KafkaSettings, RedisSettings, Settings
from streamrec.topics import Topics
from streamrec.training_examples import TrainingExample, encode_example

# Examples produced in the first seconds wait for the learner's first batches (start-up,
# first-call costs): the steady-state figures leave them out.
STARTUP_S = 2.0


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def run_learner_benchmark(
    settings: Settings, n_examples: int, seconds: float, rate: float
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    store = Path(tempfile.mkdtemp(prefix="streamrec-bench-learner-"))
    settings = settings.model_copy(
        update={
            "model": settings.model.model_copy(update={"store_dir": store}),
            "redis": settings.redis.model_copy(update={"key_prefix": f"bench-learner-{tag}"}),
            "kafka": settings.kafka.model_copy(update={"topic_prefix": f"bench-{tag}-"}),
            "learner": settings.learner.model_copy(update={"metrics_port": 0}),
        }
    )
    if settings.learner.torch_threads:
        torch.set_num_threads(settings.learner.torch_threads)
    examples = sample_examples(settings, n_examples)
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    try:
        report = _throughput_and_publish(settings, client, examples)
        report |= _event_to_weights(settings, client, examples, seconds, rate)
    finally:
        _delete_keys(client, settings.redis)
    report["config"] = {
        "preset": settings.model.preset,
        "batch_size": settings.learner.batch_size,
        "hidden_size": settings.model.hidden_size,
        "num_layers": settings.model.num_layers,
        "sampled_negatives": settings.learner.sampled_negatives,
        "torch_threads": torch.get_num_threads(),
        "examples": len(examples),
    }
    return report


def _throughput_and_publish(
    settings: Settings, client: RedisClient, examples: list[TrainingExample]
) -> dict[str, Any]:
    device = pick_device(settings.learner.device)
    covisitation = CovisitationRule.from_settings(settings.model)
    weights = random_weights(0, settings.model)
    learner = HeadLearner.from_weights(weights, settings.learner, device, covisitation)
    registry = WeightRegistry(settings, client)
    learner.mark_published(registry.publish_snapshot(learner.weights(), source="bench").version)
    batch = settings.learner.batch_size
    warm = (len(examples) // 4) // batch * batch
    for start in range(0, warm, batch):
        learner.learn(examples[start : start + batch])
    step_s: list[float] = []
    publish_ms: list[float] = []
    delta_bytes: list[int] = []
    timed = 0
    for number, start in enumerate(range(warm, len(examples), batch), 1):
        chunk = examples[start : start + batch]
        synchronize(device)
        outcome = learner.learn(chunk)
        synchronize(device)
        step_s.append(outcome.step_s)
        timed += len(chunk)
        if number % settings.learner.publish_every_steps == 0:
            began = time.perf_counter()
            delta = learner.delta()
            publication = registry.publish_delta(delta, source="bench")
            publish_ms.append((time.perf_counter() - began) * 1000)
            delta_bytes.append(publication.size_bytes)
            learner.mark_published(publication.version)
    return {
        "device": str(device),
        "examples_per_s": round(timed / sum(step_s), 1) if step_s else None,
        "step_ms_p50": _percentile([s * 1000 for s in step_s], 50),
        "step_ms_p99": _percentile([s * 1000 for s in step_s], 99),
        "publish_ms_p50": _percentile(publish_ms, 50),
        "publish_ms_p99": _percentile(publish_ms, 99),
        "delta_bytes_p50": _percentile([float(b) for b in delta_bytes], 50),
        "items": learner.model.n_items,
    }


def _event_to_weights(
    settings: Settings,
    client: RedisClient,
    examples: list[TrainingExample],
    seconds: float,
    rate: float,
) -> dict[str, Any]:
    if not broker_answers(settings.kafka):
        return {"event_to_weights_p50_ms": None, "event_to_weights_p99_ms": None,
                "event_to_weights_note": "no broker answers at the configured address"}  # fmt: skip
    topics = Topics.from_settings(settings.kafka)
    ensure_topics(settings.kafka, topics.all())
    latencies: list[float] = []
    steady: list[float] = []  # examples produced after the learner's start-up
    steady_from_ms = float("inf")  # set when production starts
    learner = Learner(settings, client, CollectorRegistry())

    def record(publication: Any) -> None:
        done_ms = publication.published_at * 1000
        latencies.extend(done_ms - produced for produced in publication.produce_ms)
        steady.extend(done_ms - p for p in publication.produce_ms if p >= steady_from_ms)

    learner.on_publish = record
    learner.start()
    stop = threading.Event()
    worker = threading.Thread(target=learner.run, args=(stop,), daemon=True)
    worker.start()
    producer = _ready_producer(settings.kafka, topics)
    steady_from_ms = time.time() * 1000 + STARTUP_S * 1000
    produced = _produce_at_rate(producer, topics, examples, seconds, rate)
    deadline = time.monotonic() + 30
    while len(latencies) < produced and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    worker.join(30)
    learner.close()
    _delete_topics(settings.kafka, topics)
    return {
        "event_to_weights_p50_ms": _percentile(latencies, 50),
        "event_to_weights_p99_ms": _percentile(latencies, 99),
        "event_to_weights_steady_p50_ms": _percentile(steady, 50),
        "event_to_weights_steady_p99_ms": _percentile(steady, 99),
        "event_to_weights_examples": len(latencies),
        "event_to_weights_rate_per_s": rate,
        "versions_published": len(learner.publications),
    }


def _ready_producer(kafka: KafkaSettings, topics: Topics) -> Producer:
    """A producer that can send at once.

    An idempotent producer sends nothing until the broker gave it an id (about 0.55 s on
    the embedded broker), which is not the learner's latency: one record goes to the
    benchmark's clicks topic, which nothing reads here, before the clock starts.
    """
    producer = make_producer(kafka, **{"linger.ms": 1})
    producer.produce(topics.clicks, b"{}")
    producer.flush(10)
    return producer


def _produce_at_rate(
    producer: Producer,
    topics: Topics,
    examples: list[TrainingExample],
    seconds: float,
    rate: float,
) -> int:
    """Produce examples (cycling the sample) at ``rate`` per second for ``seconds``."""
    began = time.monotonic()
    sent = 0
    while True:
        elapsed = time.monotonic() - began
        if elapsed >= seconds:
            break
        due = int(elapsed * rate)
        while sent < due:
            example = examples[sent % len(examples)]
            producer.produce(
                topics.training_examples, encode_example(example), key=example.session_id.encode()
            )
            sent += 1
        producer.poll(0)
        time.sleep(0.005)
    producer.flush(10)
    return sent


def _delete_topics(kafka: KafkaSettings, topics: Topics) -> None:
    from confluent_kafka.admin import AdminClient

    AdminClient(kafka.client_config()).delete_topics(list(topics.all()))


def _delete_keys(client: RedisClient, redis_settings: RedisSettings) -> None:
    keys = list(client.scan_iter(f"{redis_settings.key_prefix}:*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])
