"""The online learner process: ``training-examples`` in, model versions out.

Loop: fill a micro-batch (up to ``batch_size`` examples or ``batch_ms`` after the first
one arrived: ``batch_fill.py``), let ``HeadLearner`` score it (prequential HR@20/MRR@20)
and take a head step, write the batch's signals to the ``learner_signals`` Redis stream,
and every ``publish_every_steps`` steps or ``publish_every_s`` seconds publish a version
(a delta of touched rows, every ``snapshot_every``-th version a full snapshot).

Delivery: the learner owns the partitions of ``training-examples`` (manual assignment, one
learner per topic). Each version's metadata holds the next offset per partition of the
examples it contains; the Kafka group offsets are committed right after the version is
published. On start the learner resumes from the newer of the two, so a crash loses no
example: what was learned but not yet published is simply read again.

Repeats: the flow delivers examples at least once; a record whose ``example_id`` was read
before is dropped (``streamrec.example_dedupe``, counted in
``streamrec_learner_duplicate_examples_total``). The repeat window is rebuilt from the topic
on start and on a rewind, so a restart neither re-learns what a version holds nor learns a
re-emitted example twice.

Versions promoted by someone else (a fine-tune, a rollback) win: when the registry's
current version is not the one the learner follows, the learner reloads it and rewinds to
its own last published offsets, re-learning the unpublished examples on top.

Which version the learner builds on (at start, when the pointer moves, when a version
does not load or Redis lost the registry) is ``VersionFollower``'s (``version_follower.py``).

The offset decisions live in ``LearnerPositions`` (``positions.py``, no I/O); this module
only moves data between it, the follower, the head, Kafka, Redis and the metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from confluent_kafka import Consumer, Message, TopicPartition
from prometheus_client import CollectorRegistry

from online_models.learner.alerts import guard_alert, topic_reset_alert, unloadable_alert
from online_models.learner.batch_fill import fill_batch
from online_models.learner.metrics import LearnerMetrics
from online_models.learner.micro_batch import BatchOutcome, HeadLearner
from online_models.learner.positions import LearnerPositions
from online_models.learner.signal import LearnerSignal
from online_models.learner.version_follower import SkippedVersion, VersionFollower
from online_models.model.covisitation import CovisitationRule
from online_models.model.device import pick_device
from online_models.model.weights import ModelWeights
from online_models.registry.weight_registry import Publication, VersionInfo, WeightRegistry
from streamrec.alert_sender import AlertSender
from streamrec.example_dedupe import rebuild_dedupe
from streamrec.kafka_clients import emptied_end, make_consumer
from streamrec.redis_connection import RedisClient
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings, fitted_values, with_fitted
from streamrec.structured_log import log_event
from streamrec.topics import Topics
from streamrec.training_examples import TrainingExample, decode_example

logger = logging.getLogger(__name__)

SOURCE = "learner"


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
        client: RedisClient,
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
        self.alerts = AlertSender(settings)
        self.head: HeadLearner | None = None
        self.examples_seen = 0
        self.progress = LearnerPositions.from_settings(
            self.topics.training_examples, settings, now_s=time.monotonic()
        )
        self.follower = VersionFollower(self.registry, settings.model, self._version_skipped)
        self.publications: list[PublishRecord] = []
        self.on_publish: Callable[[PublishRecord], None] | None = None
        self.skipped = 0
        self.batch_taken_s: float | None = None  # when the last micro-batch was taken
        # Learner knobs fitted on the shop's warm-up (``streamrec train --tune``), carried
        # from version to version in the metadata; explicit settings win (``with_fitted``).
        self.fitted: dict[str, float] = {}

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
        """Load the version to continue from and assign the partitions at its offsets."""
        weights = self.follower.start(time.monotonic())
        info = self._adopt(weights)
        self.consumer = make_consumer(self.settings.kafka, self.settings.learner.consumer_group)
        topic = self.topics.training_examples
        metadata = self.consumer.list_topics(topic, timeout=10).topics[topic]
        partitions = sorted(metadata.partitions)
        assigned = [TopicPartition(topic, p) for p in partitions]
        committed = self.consumer.committed(assigned, timeout=10)
        resume = self.progress.resume(
            partitions, info.offsets if info else {},
            {tp.partition: tp.offset for tp in committed},
            fallback=weights.version != self.follower.followed,
        )  # fmt: skip
        self._assign()
        self._rebuild_repeats()
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

    def _rebuild_repeats(self) -> None:
        """Read back the records before the read positions into the repeat window."""
        started = time.perf_counter()
        records = rebuild_dedupe(
            self.settings.kafka, self.topics.training_examples, self.progress.repeats,
            self.progress.positions,
        )  # fmt: skip
        log_event(
            logger, "learner_repeat_window_rebuilt", records=records,
            seconds=round(time.perf_counter() - started, 3),
        )  # fmt: skip

    def _commit(self, positions: dict[int, int]) -> None:
        assert self.consumer is not None
        topic = self.topics.training_examples
        offsets = [TopicPartition(topic, p, o) for p, o in positions.items()]
        self.consumer.commit(offsets=offsets, asynchronous=False)

    def _adopt(self, weights: ModelWeights) -> VersionInfo | None:
        """Continue from ``weights`` (a fresh optimizer state); returns its metadata.

        Its fitted knobs, if it carries any, replace the ones followed so far."""
        info = self.registry.info(weights.version)
        self.fitted = (fitted_values(info.metrics) if info else {}) or self.fitted
        learner = with_fitted(self.settings.learner, self.fitted)
        covisitation = CovisitationRule.from_settings(self.settings.model)
        self.head = HeadLearner.from_weights(weights, learner, self.device, covisitation)
        self.examples_seen = info.examples_seen if info else 0
        self.metrics.model_version.set(weights.version)
        self.metrics.items.set(weights.n_items)
        self.metrics.encoder_compiled.set(self.head.encoder_compiled)
        return info

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None

    # -- the loop ------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, idle_exit_s: float | None = None) -> None:
        """Learn until ``stop`` is set (or after ``idle_exit_s`` without messages)."""
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
        """One micro-batch (possibly empty) plus whatever publishing is due; messages read."""
        self._follow_registry()
        messages = self._poll_batch()
        if not messages:
            self._restart_emptied_partitions()
        examples = self._decode(messages)
        if examples:
            self.learn(examples)
        if self.progress.publish_due(time.monotonic()):
            self.publish()
        return len(messages)

    def _poll_batch(self) -> list[Message]:
        assert self.consumer is not None
        learner = self.settings.learner
        batch = fill_batch(
            self.consumer.consume, learner.batch_size, learner.batch_ms / 1000,
            self.batch_taken_s, time.monotonic,
        )  # fmt: skip
        self.batch_taken_s = time.monotonic()
        return batch

    def _restart_emptied_partitions(self) -> None:
        """Read again from its beginning any partition emptied under the learner, and say so."""
        assert self.consumer is not None and self.head is not None
        topic = self.topics.training_examples
        for partition, offset in self.positions.items():
            end = emptied_end(self.consumer, topic, partition, offset)
            if end is None:
                continue
            self.progress.restart_partition(partition)
            alert = topic_reset_alert(
                topic, partition, offset, end, self.examples_seen, self.head.base_version
            )
            self.alerts.send(alert)
            self._assign()

    def _decode(self, messages: list[Message]) -> list[TrainingExample]:
        """The examples to learn: not undecodable, not repeats (both are counted)."""
        examples: list[TrainingExample] = []
        for message in messages:
            try:
                example: TrainingExample | None = decode_example(message.value())
            except ValueError:
                example = None
                self.metrics.decode_errors.inc()
            read = (message.partition(), message.offset(), message.timestamp()[1])
            example_id = None if example is None else example.example_id
            if self.progress.record_read(*read, example_id) and example is not None:
                examples.append(example)
            elif example is not None:
                self.metrics.duplicates.inc()
        return examples

    def learn(self, examples: list[TrainingExample]) -> BatchOutcome:
        """Score and learn one micro-batch; signals, metrics and alerts follow from it."""
        assert self.head is not None
        outcome = self.head.learn(examples)
        self.examples_seen += len(examples)
        self.metrics.examples.inc(len(examples))
        self.metrics.step_seconds.observe(outcome.step_s)
        self.metrics.items.set(self.head.model.n_items)
        self.metrics.encoder_compiled.set(self.head.encoder_compiled)
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
        signal = LearnerSignal(
            model_version=self.head.base_version,
            examples=outcome.ranking.examples,  # ranked: exposure examples are not
            hits_at_20=outcome.ranking.hits,
            mrr_sum=outcome.ranking.reciprocal_rank_sum,
            mean_loss=outcome.loss,
            first_offset=min(offsets),
            last_offset=max(offsets),
            ts_ms=int(time.time() * 1000),
            event_ts_ms=max(e.ts for e in examples),
            new_items=outcome.new_items,
            skipped=outcome.skipped,
        )
        self.client.xadd(
            self.keys.learner_signals,
            signal.fields(),  # type: ignore[arg-type]
            maxlen=self.settings.learner.signals_maxlen,
            approximate=True,
        )

    def _alert(self, outcome: BatchOutcome, examples: list[TrainingExample]) -> None:
        """The guard's alert record on the alerts topic."""
        assert self.head is not None and outcome.skipped
        alert = guard_alert(outcome.skipped, examples, self.examples_seen, self.head.base_version)
        self.alerts.send(alert)
        log_event(logger, "learner_step_skipped", logging.WARNING, reason=outcome.skipped)

    def publish_if_pending(self) -> None:
        if self.progress.has_pending:
            self.publish()

    def publish(self) -> Publication | None:
        """Publish what was learned since the last version, then commit its offsets."""
        assert self.head is not None and self.consumer is not None
        started = time.perf_counter()
        checkpoint, checkpoint_s = self.progress.checkpoint(), time.monotonic()
        snapshot = checkpoint.snapshot
        offsets = checkpoint.offsets  # the version's metadata; the same offsets are committed
        common = {
            "source": SOURCE, "examples_seen": self.examples_seen, "offsets": offsets,
            "expected_current": self.follower.followed, "metrics": self.fitted,
        }  # fmt: skip
        try:
            if snapshot or self.follower.followed is None:
                publication = self.registry.publish_snapshot(self.head.weights(), **common)
            else:
                publication = self.registry.publish_delta(self.head.delta(), **common)
        except ValueError as exc:  # non-finite weights: never published
            log_event(logger, "learner_publish_refused", logging.ERROR, reason=str(exc))
            self.skipped += 1
            self.metrics.skipped.labels("non_finite_weights").inc()
            self._adopt_external(self.registry.load(self.head.base_version), rewind=False)
            return None
        elapsed = time.perf_counter() - started
        if not publication.current:
            # Someone promoted another version meanwhile: theirs wins (if it loads).
            self._follow_registry()
            return publication
        self.follower.published(publication.version)
        self.head.mark_published(publication.version)
        if snapshot:
            self.registry.prune(self.settings.model.keep_snapshots)
        self._commit(checkpoint.positions)
        produce_ms = self.progress.mark_published(checkpoint, now_s=checkpoint_s)
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

    def _follow_registry(self) -> None:
        """Adopt a version someone else made current (``VersionFollower.poll``)."""
        weights = self.follower.poll(time.monotonic())
        if weights is not None:
            self._adopt_external(weights)

    def _version_skipped(self, skipped: SkippedVersion) -> None:
        """A current version does not load: count, log, alert (once per version)."""
        self.metrics.unloadable_versions.inc()
        log_event(
            logger, "learner_version_unloadable", logging.ERROR, version=skipped.version,
            continued_from=skipped.continued_from, reason=skipped.reason,
            retry_in_s=skipped.retry_in_s,
        )  # fmt: skip
        if skipped.first:
            self.alerts.send(
                unloadable_alert(
                    skipped.version, skipped.continued_from, skipped.reason, self.examples_seen
                )
            )

    def _adopt_external(self, weights: ModelWeights, rewind: bool = True) -> None:
        """Continue from ``weights``; rewind to the last published offsets so nothing is lost.

        Without ``rewind`` the unpublished examples are dropped (used when they produced
        non-finite weights: re-learning them would only repeat that).
        """
        self._adopt(weights)
        if rewind:
            self.progress.rewind()
            self._rebuild_repeats()
        else:
            self.progress.drop_unpublished()
        self._assign()
        log_event(logger, "learner_adopted_version", version=weights.version)
