"""The online learner process: ``training-examples`` in, model versions out.

Loop: fill a micro-batch (up to ``batch_size`` examples or ``batch_ms`` after the first
one arrived), let ``HeadLearner`` score it (prequential HR@20/MRR@20) and take a head
step, write the batch's signals to the ``learner_signals`` Redis stream, and every
``publish_every_steps`` steps or ``publish_every_s`` seconds publish a version (a delta
of touched rows, every ``snapshot_every``-th version a full snapshot).

Delivery: the learner owns the partitions of ``training-examples`` (manual assignment, one
learner per topic). Each version's metadata holds the next offset per partition of the
examples it contains; the Kafka group offsets are committed right after the version is
published. On start the learner resumes from the newer of the two, so a crash loses no
example: what was learned but not yet published is simply read again.

Versions promoted by someone else (a fine-tune, a rollback) win: when the registry's
current version is not the learner's last publication, the learner reloads it and
rewinds to its own last published offsets, re-learning the unpublished examples on top.

Those decisions live in ``LearnerPositions`` (``positions.py``, no I/O); this module only
moves data between it, the head, Kafka, Redis and the metrics.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
import torch
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from online_models.learner.metrics import LearnerMetrics
from online_models.learner.micro_batch import BatchOutcome, HeadLearner, pick_device
from online_models.learner.positions import LearnerPositions
from online_models.model.recommender import SessionRecommender
from online_models.model.weights import ModelShape, ModelWeights
from online_models.registry.weight_registry import (
    Publication,
    VersionInfo,
    WeightLoadError,
    WeightRegistry,
)
from streamrec.alerts import Alert, StreamOffset, encode_alert, make_alert
from streamrec.kafka_clients import make_consumer, make_producer
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings
from streamrec.structured_log import log_event
from streamrec.topics import Topics
from streamrec.training_examples import TrainingExample, decode_example

logger = logging.getLogger(__name__)

SOURCE = "learner"
GUARD_DETECTOR = "learner_guard"
ALERT_OFFSETS = 10  # source offsets an alert carries: enough to read the batch back


def guard_alert(
    reason: str, examples: Sequence[TrainingExample], examples_seen: int, model_version: int
) -> Alert:
    """The alert for a micro-batch a guard skipped (``reason``: non-finite loss/gradient)."""
    return make_alert(
        GUARD_DETECTOR, reason, math.nan, math.nan, examples_seen, model_version,
        message=f"skipped a micro-batch of {len(examples)} examples: {reason}",
        offsets=tuple(
            StreamOffset(e.source_topic, e.source_partition, e.source_offset)
            for e in examples[:ALERT_OFFSETS]
        ),
    )  # fmt: skip


@dataclass(slots=True)
class PublishRecord:
    """One publication, for benchmarks: when, what, and the produce times it covered."""

    version: int
    kind: str
    current: bool
    publish_s: float
    size_bytes: int
    published_at: float
    produce_ms: list[int]


class Learner:
    """Consumes training examples and keeps publishing fresh head weights."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        metrics_registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.client = client
        self.registry = WeightRegistry(settings, client)
        self.keys = RedisKeys(settings.redis.key_prefix)
        self.topics = Topics.from_settings(settings.kafka)
        self.metrics = LearnerMetrics(metrics_registry)
        self.device = pick_device(settings.learner.device)
        if settings.learner.torch_threads:
            # The learner shares the CPU with the flow and serving: torch's default of one
            # thread per core made steps 10x slower here under contention (docs/model.md).
            torch.set_num_threads(settings.learner.torch_threads)
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.head: HeadLearner | None = None
        self.examples_seen = 0
        self.progress = LearnerPositions.from_settings(
            self.topics.training_examples, settings.learner, now_s=time.monotonic()
        )
        self.publications: list[PublishRecord] = []
        self.on_publish: Callable[[PublishRecord], None] | None = None
        self.skipped = 0

    @property
    def positions(self) -> dict[int, int]:
        """Partition -> next offset to read (a copy)."""
        return dict(self.progress.positions)

    @property
    def published_positions(self) -> dict[int, int]:
        """Partition -> next offset covered by the last publication (a copy)."""
        return dict(self.progress.published)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Load (or create) the current version and assign the partitions at its offsets."""
        info = self._adopt(self._load_or_bootstrap())
        self.producer = make_producer(self.settings.kafka)
        self.consumer = make_consumer(self.settings.kafka, self.settings.learner.consumer_group)
        topic = self.topics.training_examples
        metadata = self.consumer.list_topics(topic, timeout=10).topics[topic]
        partitions = sorted(metadata.partitions)
        assigned = [TopicPartition(topic, p) for p in partitions]
        committed = self.consumer.committed(assigned, timeout=10)
        resume = self.progress.resume(
            partitions, info.offsets if info else {}, {tp.partition: tp.offset for tp in committed}
        )
        self._assign()
        if resume.commit:  # killed between a publish and its commit: finish that commit
            self._commit(resume.positions)
        log_event(
            logger, "learner_started", version=self.head.base_version if self.head else None,
            positions={str(p): o for p, o in self.positions.items()}, device=str(self.device),
        )  # fmt: skip

    def _assign(self) -> None:
        assert self.consumer is not None
        topic = self.topics.training_examples
        positions = self.progress.positions
        self.consumer.assign([TopicPartition(topic, p, o) for p, o in positions.items()])

    def _commit(self, positions: dict[int, int]) -> None:
        assert self.consumer is not None
        topic = self.topics.training_examples
        offsets = [TopicPartition(topic, p, o) for p, o in positions.items()]
        self.consumer.commit(offsets=offsets, asynchronous=False)

    def _load_or_bootstrap(self) -> ModelWeights:
        try:
            return self.registry.load()
        except WeightLoadError:
            shape = ModelShape.from_settings(self.settings.model)
            empty = SessionRecommender(shape, self.settings.model.initial_items).to_weights(0, [])
            publication = self.registry.publish_snapshot(empty, source=f"{SOURCE}-init")
            log_event(logger, "learner_bootstrapped", version=publication.version)
            return self.registry.load(publication.version)

    def _adopt(self, weights: ModelWeights) -> VersionInfo | None:
        """Continue from ``weights`` (a fresh optimizer state); returns its metadata."""
        self.head = HeadLearner.from_weights(weights, self.settings.learner, self.device)
        info = self.registry.info(weights.version)
        self.examples_seen = info.examples_seen if info else 0
        self.metrics.model_version.set(weights.version)
        self.metrics.items.set(weights.n_items)
        return info

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        if self.producer is not None:
            self.producer.flush(5)

    # -- the loop ------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, idle_exit_s: float | None = None) -> None:
        """Learn until ``stop`` is set (or after ``idle_exit_s`` without examples)."""
        stop = stop or threading.Event()
        last_example = time.monotonic()
        while not stop.is_set():
            handled = self.run_once()
            now = time.monotonic()
            if handled:
                last_example = now
            elif idle_exit_s is not None and now - last_example > idle_exit_s:
                break
        self.publish_if_pending()

    def run_once(self) -> int:
        """One micro-batch (possibly empty) plus whatever publishing is due; examples handled."""
        self._follow_external_promotion()
        messages = self._poll_batch()
        examples = self._decode(messages)
        if examples:
            self.learn(examples)
        if self.progress.publish_due(time.monotonic()):
            self.publish()
        return len(examples)

    def _poll_batch(self) -> list[Message]:
        assert self.consumer is not None
        learner = self.settings.learner
        batch: list[Message] = []
        deadline: float | None = None
        while len(batch) < learner.batch_size:
            wait = learner.batch_ms / 1000 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            got = self.consumer.consume(learner.batch_size - len(batch), timeout=wait)
            for message in got:
                if message.error() is None:
                    batch.append(message)
            if batch and deadline is None:
                deadline = time.monotonic() + learner.batch_ms / 1000
            if not got and deadline is None:
                break  # idle: return so the caller can publish or stop
        return batch

    def _decode(self, messages: list[Message]) -> list[TrainingExample]:
        examples: list[TrainingExample] = []
        for message in messages:
            self.progress.record_read(message.partition(), message.offset(), message.timestamp()[1])
            try:
                examples.append(decode_example(message.value()))
            except ValueError:
                self.metrics.decode_errors.inc()
        return examples

    def learn(self, examples: list[TrainingExample]) -> BatchOutcome:
        """Score and learn one micro-batch; signals, metrics and alerts follow from it."""
        assert self.head is not None
        outcome = self.head.learn(examples)
        self.examples_seen += len(examples)
        self.metrics.examples.inc(len(examples))
        self.metrics.step_seconds.observe(outcome.step_s)
        self.metrics.items.set(self.head.model.n_items)
        ranking = outcome.ranking
        self.metrics.hit_rate.set(ranking.hit_rate)
        self.metrics.mrr.set(ranking.mrr)
        if outcome.skipped:
            self.skipped += 1
            self.metrics.skipped.labels(outcome.skipped).inc()
            self._alert(outcome, examples)
        else:
            self.metrics.steps.inc()
            self.metrics.loss.set(outcome.loss)
            self.progress.record_step()
        self._signal(outcome, examples)
        return outcome

    # -- outputs -------------------------------------------------------------------

    def _signal(self, outcome: BatchOutcome, examples: list[TrainingExample]) -> None:
        assert self.head is not None
        offsets = [e.source_offset for e in examples]
        fields = {
            "model_version": self.head.base_version,
            "examples": len(examples),
            "hits_at_20": outcome.ranking.hits,
            "mrr_sum": outcome.ranking.reciprocal_rank_sum,
            "mean_loss": outcome.loss,
            "first_offset": min(offsets),
            "last_offset": max(offsets),
            "event_ts_ms": max(e.ts for e in examples),
            "new_items": outcome.new_items,
            "skipped": outcome.skipped,
            "ts_ms": int(time.time() * 1000),
        }
        self.client.xadd(
            self.keys.learner_signals,
            fields,  # type: ignore[arg-type]
            maxlen=self.settings.learner.signals_maxlen,
            approximate=True,
        )

    def _alert(self, outcome: BatchOutcome, examples: list[TrainingExample]) -> None:
        """The guard's alert record on the alerts topic."""
        assert self.producer is not None and self.head is not None and outcome.skipped
        alert = guard_alert(outcome.skipped, examples, self.examples_seen, self.head.base_version)
        # Keyed by detector, like the drift monitor's Kafka sink (one detector's alerts in order).
        self.producer.produce(self.topics.alerts, encode_alert(alert), key=alert.detector.encode())
        self.producer.poll(0)
        log_event(logger, "learner_step_skipped", logging.WARNING, reason=outcome.skipped)

    def publish_if_pending(self) -> None:
        if self.progress.has_pending:
            self.publish()

    def publish(self) -> Publication | None:
        """Publish what was learned since the last version, then commit its offsets."""
        assert self.head is not None and self.consumer is not None
        started = time.perf_counter()
        checkpoint = self.progress.checkpoint()
        snapshot = checkpoint.snapshot
        offsets = checkpoint.offsets  # the version's metadata; the same offsets are committed
        common = {"source": SOURCE, "examples_seen": self.examples_seen, "offsets": offsets}
        try:
            if snapshot:
                publication = self.registry.publish_snapshot(self.head.weights(), **common)
            else:
                publication = self.registry.publish_delta(self.head.delta(), **common)
        except ValueError as exc:  # non-finite weights: never published
            log_event(logger, "learner_publish_refused", logging.ERROR, reason=str(exc))
            self.skipped += 1
            self.metrics.skipped.labels("non_finite_weights").inc()
            self._adopt_external(self.head.base_version, rewind=False)
            return None
        elapsed = time.perf_counter() - started
        if not publication.current:
            # Someone promoted another version meanwhile: theirs wins.
            self._adopt_external(self.registry.current_version())
            return publication
        self.head.mark_published(publication.version)
        if snapshot:
            self.registry.prune(self.settings.model.keep_snapshots)
        self._commit(checkpoint.positions)
        produce_ms = self.progress.mark_published(checkpoint, now_s=time.monotonic())
        kind = "snapshot" if snapshot else "delta"
        self.metrics.versions.labels(kind).inc()
        self.metrics.publish_seconds.observe(elapsed)
        self.metrics.model_version.set(publication.version)
        current_ms = time.time() * 1000
        observe = self.metrics.event_to_weights_seconds.observe
        for produced_ms in produce_ms:
            if produced_ms > 0:
                observe(max(0.0, current_ms - produced_ms) / 1000)
        record = PublishRecord(
            publication.version, kind, True, elapsed, publication.size_bytes, time.time(),
            produce_ms,
        )  # fmt: skip
        self.publications.append(record)
        if self.on_publish is not None:
            self.on_publish(record)
        log_event(
            logger, "learner_published", version=publication.version, kind=kind,
            bytes=publication.size_bytes, examples_seen=self.examples_seen,
        )  # fmt: skip
        return publication

    def _follow_external_promotion(self) -> None:
        assert self.head is not None
        current = self.registry.current_version()
        if current is not None and current != self.head.base_version:
            self._adopt_external(current)

    def _adopt_external(self, version: int | None, rewind: bool = True) -> None:
        """Reload ``version``; rewind to the last published offsets so nothing is lost.

        Without ``rewind`` the unpublished examples are dropped (used when they produced
        non-finite weights: re-learning them would only repeat that).
        """
        weights = self.registry.load(version)
        self._adopt(weights)
        if rewind:
            self.progress.rewind()
        else:
            self.progress.drop_unpublished()
        self._assign()
        log_event(logger, "learner_adopted_version", version=weights.version)
