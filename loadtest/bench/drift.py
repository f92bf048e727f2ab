"""``streamrec bench drift``: detection delay, false alarms and recovery on the generator.

How it measures (one process; the real learner step, detectors and fine-tune code):

- a generator scenario (``loadtest.synthetic_traffic``) becomes events, then training
  examples through the flow's own example builder (``flows.example_builder``, with the
  ``FlowSettings`` history length and purchase weight);
- the online learner's step (``HeadLearner.learn``: score first, then update the head) runs
  on micro-batches of ``LearnerSettings.batch_size``; each outcome becomes the
  ``LearnerSignal`` the learner writes to Redis, and ``DriftMonitor`` sees it and every
  example, as ``streamrec drift`` does;
- ``detection_delay_events``: valid events from the true change (``GroundTruth.drift_start``)
  to the event whose example tripped the first alert after it; median over seeds (abrupt;
  ``gradual_detection_delay_events``: the gradual scenario, from the start of the ramp);
- ``false_alarms_per_million``: alerts after warm-up on a stationary stream of at least
  ``stationary_examples`` examples (all detectors), per million examples;
- ``recovery_events``: events after the change until HR@20 over ``RECOVERY_WINDOW``
  post-change examples is back within 10% of its level over the same number of examples
  before the change; once with online learning only, once with the first drift alert's
  fine-tune (replay since the alert minus the lookback, train, gate: the code of
  ``streamrec finetune``) swapped in when it would have finished, in the stream's event time;
- with ``pipeline``, ``pipeline_*``: the abrupt scenario's examples through the broker, the
  real ``Learner``, the ``streamrec drift`` loop and its fine-tune process (needs a broker).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.progress import Progress

from flows.example_builder import examples_from_events
from flows.feature_config import FeatureConfig
from loadtest.synthetic_traffic import GeneratorConfig, GroundTruth, Scenario, generate
from online_models.drift.monitor import DriftMonitor, wants_finetune
from online_models.drift.signals import LearnerSignal, spread_hits
from online_models.finetune.gate import GateVerdict, judge_candidate, split_replay
from online_models.finetune.training import hits_at_20, train_candidate
from online_models.learner.micro_batch import HeadLearner
from online_models.model.recommender import random_weights
from online_models.model.weights import ModelWeights
from streamrec.alerts import Alert
from streamrec.events import Event, parse_event
from streamrec.settings import Settings
from streamrec.training_examples import TrainingExample

RECOVERY_WINDOW = 1000
RECOVERED_WITHIN = 0.10


@dataclass(slots=True)
class StreamRun:
    """What one pass of learner and monitor over a stream saw."""

    alert_events: list[tuple[int, Alert]] = field(default_factory=list)  # (event index, alert)
    hits: list[float] = field(default_factory=list)  # per example, in stream order
    event_index: list[int] = field(default_factory=list)
    examples: int = 0
    finetune: dict[str, Any] = field(default_factory=dict)


def scenario_examples(
    config: GeneratorConfig, features: FeatureConfig
) -> tuple[list[TrainingExample], GroundTruth]:
    """The scenario's training examples (in event order) and its ground truth."""
    lines, truth = generate(config)
    events = (event for event in map(parse_event, lines) if isinstance(event, Event))
    return list(examples_from_events(events, features)), truth


def event_index_of(example: TrainingExample) -> int:
    """Generator event ids end with the valid-event index (``scenario-seed-index``)."""
    return int(example.example_id.rsplit("-", 1)[1])


class _StreamReplayer:
    """Drives learner and monitor batch by batch; runs at most one fine-tune if asked."""

    def __init__(
        self,
        settings: Settings,
        with_finetune: bool,
        seed: int,
        weights: ModelWeights | None,
        index_of: Callable[[TrainingExample], int],
    ) -> None:
        self.settings = settings
        self.with_finetune = with_finetune
        self.index_of = index_of
        self.learner = HeadLearner.from_weights(
            weights or random_weights(0, settings.model, seed), settings.learner
        )
        self.monitor = DriftMonitor(settings)
        self.run = StreamRun()
        self.recent: list[TrainingExample] = []
        self.version = 0
        self.alert_at: tuple[int, int] | None = None  # (examples seen, event ts) of the trigger
        self.candidate: ModelWeights | None = None
        self.swap_at_ts: int | None = None

    def feed(self, batch: list[TrainingExample]) -> None:
        run, monitor = self.run, self.monitor
        outcome = self.learner.learn(batch)
        self.version += 1
        first = len(run.hits)
        run.hits.extend(spread_hits(outcome.ranking.hits, len(batch)))
        run.event_index.extend(self.index_of(example) for example in batch)
        run.examples += len(batch)
        signal = LearnerSignal(
            self.version, len(batch), outcome.ranking.hits, outcome.ranking.reciprocal_rank_sum,
            outcome.loss, first, first + len(batch) - 1, batch[-1].ts,
        )  # fmt: skip
        triggered = False
        for alert in monitor.on_learner_signal(signal):
            run.alert_events.append((run.event_index[alert.position - 1], alert))
            triggered |= wants_finetune(alert, True)
        for example in batch:
            for alert in monitor.on_example(example, 0, 0):
                run.alert_events.append((self.index_of(example), alert))
                triggered |= wants_finetune(alert, True)
        self.recent.extend(batch)
        del self.recent[: max(0, len(self.recent) - 4 * self.settings.drift.replay_examples)]
        if self.with_finetune:
            self._finetune_step(batch, triggered)

    def _finetune_step(self, batch: list[TrainingExample], triggered: bool) -> None:
        drift = self.settings.drift
        if triggered and self.alert_at is None and not self.run.finetune:
            self.alert_at = (self.monitor.examples_seen, batch[-1].ts)
        if self.alert_at is not None:
            seen_at, ts_at = self.alert_at
            if self.monitor.examples_seen - seen_at >= drift.finetune_wait_examples:
                since_ts = ts_at - int(drift.finetune_lookback_s * 1000)
                replay = [e for e in self.recent if e.ts >= since_ts][-drift.replay_examples :]
                started = time.perf_counter()
                candidate, verdict = finetune_candidate(
                    self.settings, self.learner.weights(), replay
                )
                seconds = time.perf_counter() - started
                self.run.finetune = {
                    "finetune_s": seconds,
                    "finetune_promoted": verdict.promoted,
                    "finetune_reason": verdict.reason,
                    "finetune_replay_examples": len(replay),
                    "finetune_started_event": event_index_of(batch[-1]),
                }
                self.candidate = candidate if verdict.promoted else None
                self.swap_at_ts = batch[-1].ts + int(seconds * 1000)
                self.alert_at = None
        due = self.swap_at_ts is not None and batch[-1].ts >= self.swap_at_ts
        if self.candidate is not None and due:
            self.learner = HeadLearner.from_weights(self.candidate, self.settings.learner)
            self.run.finetune["swapped_at_event"] = event_index_of(batch[-1])
            self.candidate = None


def run_stream(
    settings: Settings,
    examples: Iterable[TrainingExample],
    with_finetune: bool,
    seed: int = 0,
    weights: ModelWeights | None = None,
    index_of: Callable[[TrainingExample], int] = event_index_of,
) -> StreamRun:
    """Learner + monitor over ``examples`` in micro-batches, from ``weights`` (random ones
    by default); ``index_of`` places an example in the stream (the generator's event index)."""
    replayer = _StreamReplayer(settings, with_finetune, seed, weights, index_of)
    batch: list[TrainingExample] = []
    for example in examples:
        batch.append(example)
        if len(batch) == settings.learner.batch_size:
            replayer.feed(batch)
            batch = []
    if batch:
        replayer.feed(batch)
    return replayer.run


def finetune_candidate(
    settings: Settings, serving: ModelWeights, replay: Sequence[TrainingExample]
) -> tuple[ModelWeights, GateVerdict]:
    """Split, train from the serving weights, and judge: what ``finetune_job`` does, in memory."""
    train, holdout = split_replay(replay, settings.drift.finetune_holdout_fraction)
    candidate = train_candidate(settings, serving, train)
    verdict = judge_candidate(
        hits_at_20(candidate, holdout),
        hits_at_20(serving, holdout),
        len(holdout),
        settings.drift.finetune_margin,
        settings.drift.finetune_min_holdout,
    )
    return candidate, verdict


def first_alert_delay(run: StreamRun, truth: GroundTruth) -> int | None:
    start = truth.drift_start or 0
    after = [index for index, _ in run.alert_events if index >= start]
    return min(after) - start if after else None


def recovery_events(run: StreamRun, truth: GroundTruth) -> int | None:
    """Events after the change until windowed HR@20 is back within 10% of before."""
    start = truth.drift_start or 0
    change = next(i for i, index in enumerate(run.event_index) if index >= start)
    if change < RECOVERY_WINDOW:
        return None
    before = sum(run.hits[change - RECOVERY_WINDOW : change]) / RECOVERY_WINDOW
    window = sum(run.hits[change : change + RECOVERY_WINDOW])
    for end in range(change + RECOVERY_WINDOW, len(run.hits)):
        if window / RECOVERY_WINDOW >= (1 - RECOVERED_WITHIN) * before:
            return run.event_index[end - 1] - start
        window += run.hits[end] - run.hits[end - RECOVERY_WINDOW]
    return None


def stationary_false_alarms(
    settings: Settings, min_examples: int, seed: int, progress: Progress
) -> tuple[int, int]:
    """(alerts after warm-up, examples) on a stationary stream of >= ``min_examples``."""
    events = int(min_examples * 1.25) + 1000
    config = GeneratorConfig(Scenario.STATIONARY, events=events, seed=seed)
    task = progress.add_task("stationary stream", total=min_examples)
    lines, _ = generate(config)
    parsed = (event for event in map(parse_event, lines) if isinstance(event, Event))
    examples = examples_from_events(parsed, FeatureConfig.from_settings(settings.flow))

    def counted() -> Iterable[TrainingExample]:
        for count, example in enumerate(examples, 1):
            if count % 10_000 == 0:
                progress.update(task, completed=count)
            yield example

    run = run_stream(settings, counted(), with_finetune=False, seed=seed)
    progress.update(task, completed=run.examples)
    return len(run.alert_events), run.examples


def run_drift_benchmark(
    settings: Settings,
    stationary_examples: int,
    events: int,
    seeds: int,
    finetune: bool,
    pipeline: bool = False,
) -> dict[str, Any]:
    """Every figure of the benchmark as one flat dict (see the module docstring)."""
    features = FeatureConfig.from_settings(settings.flow)
    result: dict[str, Any] = {"events_per_scenario": events, "seeds": seeds}
    with Progress(transient=True) as progress:
        for scenario, key in (
            (Scenario.ABRUPT, "detection_delay_events"),
            (Scenario.GRADUAL, "gradual_detection_delay_events"),
        ):
            delays: list[int] = []
            missed = 0
            task = progress.add_task(f"{scenario.value} scenario", total=seeds)
            for seed in range(seeds):
                examples, truth = scenario_examples(
                    GeneratorConfig(scenario, events=events, seed=seed), features
                )
                run = run_stream(settings, examples, with_finetune=False, seed=seed)
                delay = first_alert_delay(run, truth)
                if delay is None:
                    missed += 1
                else:
                    delays.append(delay)
                result.setdefault(f"{key}_by_detector", []).append(
                    sorted(
                        {a.detector for i, a in run.alert_events if i >= (truth.drift_start or 0)}
                    )
                )
                progress.advance(task)
            result[key] = statistics.median(delays) if delays else None
            result[f"{key}_missed"] = missed
        alarms, examples_seen = stationary_false_alarms(settings, stationary_examples, 0, progress)
        result["stationary_examples"] = examples_seen
        result["stationary_alarms"] = alarms
        result["false_alarms_per_million"] = alarms / examples_seen * 1e6
        examples, truth = scenario_examples(
            GeneratorConfig(Scenario.ABRUPT, events=events, seed=0), features
        )
        plain = run_stream(settings, examples, with_finetune=False)
        tuned = run_stream(settings, examples, with_finetune=finetune)
        result["recovery_events_without_finetune"] = recovery_events(plain, truth)
        result["recovery_events"] = recovery_events(tuned, truth)
        result["recovery_window_examples"] = RECOVERY_WINDOW
        result.update(tuned.finetune)
    if pipeline:
        result.update(run_pipeline_benchmark(settings, events))
    return result


def run_pipeline_benchmark(
    settings: Settings, events: int, timeout_s: float = 600.0
) -> dict[str, Any]:
    """The abrupt scenario through the broker, the real learner, monitor and fine-tune process.

    Examples go to a fresh one-partition ``training-examples`` topic (the flow's output;
    one partition keeps the learner's order equal to the event order, so an alert's position
    maps back to an event), under a fresh topic and key prefix that is deleted afterwards.
    """
    import threading
    import uuid

    import redis
    from prometheus_client import CollectorRegistry

    from online_models.alerts.tail import latest_alerts
    from online_models.drift.loop import run_drift_monitor
    from online_models.finetune.status import read_status
    from online_models.learner.loop import Learner
    from streamrec.kafka_clients import ensure_topics, make_producer
    from streamrec.redis_keys import RedisKeys
    from streamrec.topics import Topics
    from streamrec.training_examples import encode_example

    tag = uuid.uuid4().hex[:8]
    config = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"topic_prefix": f"bench-drift-{tag}-", "partitions": 1}
            ),
            "redis": settings.redis.model_copy(update={"key_prefix": f"bench-drift-{tag}"}),
            "learner": settings.learner.model_copy(update={"metrics_port": 0}),
            "drift": settings.drift.model_copy(update={"metrics_port": 0, "finetune_wait_s": 5.0}),
        }
    )
    keys = RedisKeys(config.redis.key_prefix)
    topics = Topics.from_settings(config.kafka)
    ensure_topics(config.kafka, topics.all())
    examples, truth = scenario_examples(
        GeneratorConfig(Scenario.ABRUPT, events=events, seed=0),
        FeatureConfig.from_settings(config.flow),
    )
    producer = make_producer(config.kafka)
    for example in examples:
        producer.produce(topics.training_examples, encode_example(example))
    producer.flush(30)
    client = redis.Redis.from_url(config.redis.redis_url.get_secret_value())
    stop = threading.Event()
    learner = Learner(config, client, CollectorRegistry())
    learner.start()
    threads = [
        threading.Thread(target=learner.run, args=(stop,), daemon=True),
        threading.Thread(
            target=run_drift_monitor, args=(config, stop, CollectorRegistry()), daemon=True
        ),
    ]
    for thread in threads:
        thread.start()
    result: dict[str, Any] = {"pipeline_examples": len(examples)}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            status = read_status(client, keys)
            if status.get("finetune_verdict") not in (None, "running"):
                break
            time.sleep(0.5)
        alerts = [a for _, a in latest_alerts(client, keys.alerts, 1000)]
        start = truth.drift_start or 0
        drift_alerts = [
            (event_index_of(examples[a.position - 1]), a.detector)
            for a in alerts
            if a.detector in ("hit_rate", "loss", "category_share", "new_items")
            and 0 < a.position <= len(examples)
        ]
        after = sorted(index for index, _ in drift_alerts if index >= start)
        result["pipeline_detection_delay_events"] = after[0] - start if after else None
        result["pipeline_alerts_before_change"] = sum(1 for i, _ in drift_alerts if i < start)
        status = read_status(client, keys)
        result["pipeline_finetune_verdict"] = status.get("finetune_verdict")
        result["pipeline_finetune_s"] = float(status.get("finetune_duration_s", "nan"))
        result["pipeline_finetune_promoted"] = status.get("finetune_verdict") == "promoted"
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        learner.close()
        stale = list(client.scan_iter(f"{config.redis.key_prefix}:*", count=1000))
        if stale:
            client.delete(*stale)
    return result
