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
- per scenario (``abrupt``, ``gradual``, ``new-items``; medians over seeds),
  ``recovery_events``: events after the change until HR@20 over ``RECOVERY_WINDOW``
  post-change examples is back within 10% of its level over the same number of examples
  before the change; once with online learning only (``recovery_events_without_finetune``),
  once with the first drift alert's fine-tune run as the drift loop runs it: scheduled by
  the alert, due after ``finetune_wait_examples`` examples (``FinetuneSchedule``, event
  time for its clock), skipped when the learner already recovered (the skip alert's text
  is reported), else replay since the alert minus the lookback plus a reservoir sampled
  from the older stream (``finetune.reservoir.sample_runs``), trained from the learner's
  weights as they were when it ranked the first held-out batch (every batch is a version
  here, and the weights of the last ``replay_examples`` worth of batches are kept in
  memory: ``gate.unseen_version``, as the job picks its base), run through the held-out
  span as the learner runs (ranked, then learned) and judged against the learner's
  prequential hit@20 there (``finetune.training``: the code of ``streamrec finetune``),
  and a promoted candidate (the span learned) swapped in when it would have finished, in
  the stream's event time;
- with ``pipeline``, ``pipeline_*``: the abrupt scenario's examples through the broker, the
  real ``Learner``, the ``streamrec drift`` loop and its fine-tune process (needs a broker).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rich.progress import Progress

from flows.example_builder import examples_from_events
from flows.feature_config import FeatureConfig
from loadtest.synthetic_traffic import GeneratorConfig, GroundTruth, Scenario, generate
from online_models.drift.finetune_schedule import DueFinetune, FinetuneSchedule, skipped_alert
from online_models.drift.monitor import DriftMonitor, wants_finetune
from online_models.drift.signals import spread_hits
from online_models.finetune.gate import (
    GateVerdict,
    LearnedBatch,
    base_fallback_note,
    split_replay,
    unseen_version,
)
from online_models.finetune.reservoir import RUN_LENGTH, sample_runs
from online_models.finetune.training import judge, train_candidate
from online_models.learner.micro_batch import HeadLearner
from online_models.learner.signal import LearnerSignal
from online_models.model.covisitation import CovisitationRule
from online_models.model.recommender import random_weights
from online_models.model.weights import ModelWeights
from streamrec.alerts import Alert
from streamrec.events import Event, parse_event
from streamrec.settings import Settings
from streamrec.training_examples import TrainingExample

RECOVERY_WINDOW = 1000
RECOVERED_WITHIN = 0.10
RECOVERY_SCENARIOS = (Scenario.ABRUPT, Scenario.GRADUAL, Scenario.NEW_ITEMS)


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
        self.seed = seed
        self.index_of = index_of
        self.covisitation = CovisitationRule.from_settings(settings.model)
        self.learner = HeadLearner.from_weights(
            weights or random_weights(0, settings.model, seed),
            settings.learner,
            covisitation=self.covisitation,
        )
        self.monitor = DriftMonitor(settings)
        self.run = StreamRun()
        self.version = 0
        drift = settings.drift
        self.schedule = FinetuneSchedule(
            drift.finetune_wait_examples, drift.finetune_wait_s, drift.finetune_skip_recovered
        )
        # Only kept with a fine-tune: the stream so far (offsets for the reservoir), the
        # learner's batches (its prequential hit@20 for the gate) and, until the fine-tune
        # ran, its weights before each of the batches a replay can reach (version: the
        # batches learned before; the candidate starts from one of them).
        self.stream: list[TrainingExample] = []
        self.learned: list[LearnedBatch] = []
        self.weights_at: dict[int, ModelWeights] = {}
        self.keep_versions = drift.replay_examples // settings.learner.batch_size + 2
        self.candidate: ModelWeights | None = None
        self.swap_at_ts: int | None = None

    def feed(self, batch: list[TrainingExample]) -> None:
        run, monitor = self.run, self.monitor
        ranked_by = self.version
        if self.with_finetune and not run.finetune:
            self.weights_at[ranked_by] = self.learner.weights()
            self.weights_at.pop(ranked_by - self.keep_versions, None)
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
        triggers: list[Alert] = []
        for alert in monitor.on_learner_signal(signal):
            run.alert_events.append((run.event_index[alert.position - 1], alert))
            triggers += [alert] if wants_finetune(alert, True) else []
        for example in batch:
            for alert in monitor.on_example(example, 0, 0):
                run.alert_events.append((self.index_of(example), alert))
                triggers += [alert] if wants_finetune(alert, True) else []
        if self.with_finetune:
            self.stream.extend(batch)
            last_ts = max(example.ts for example in batch)
            self.learned.append(LearnedBatch(last_ts, len(batch), outcome.ranking.hits, ranked_by))
            self._finetune_step(batch, triggers)

    def _finetune_step(self, batch: list[TrainingExample], triggers: list[Alert]) -> None:
        now_s = batch[-1].ts / 1000  # the schedule's clock: event time
        if triggers and not self.run.finetune:
            alert = triggers[0]
            self.schedule.schedule(
                alert, self.monitor.quality_mark(alert), self.monitor.examples_seen, now_s
            )
        due = self.schedule.due(self.monitor.examples_seen, now_s, self.monitor.recovered)
        if due is not None:
            self._finetune(due, batch)
        swap_due = self.swap_at_ts is not None and batch[-1].ts >= self.swap_at_ts
        if self.candidate is not None and swap_due:
            self.learner = HeadLearner.from_weights(
                self.candidate, self.settings.learner, covisitation=self.covisitation
            )
            self.run.finetune["swapped_at_event"] = event_index_of(batch[-1])
            self.candidate = None

    def _finetune(self, due: DueFinetune, batch: list[TrainingExample]) -> None:
        """The due fine-tune, as the job runs it (or its skip, as the loop says it)."""
        monitor, drift = self.monitor, self.settings.drift
        if due.skip:
            level = monitor.level_since(due.mark)
            alert = skipped_alert(due, level, monitor.signal_examples, monitor.model_version)
            self.run.finetune = {"finetune_promoted": False, "finetune_skipped": alert.message}
            return
        since_ts = int(due.scheduled_s * 1000) - int(drift.finetune_lookback_s * 1000)
        window = next(
            (i for i, example in enumerate(self.stream) if example.ts >= since_ts),
            len(self.stream),
        )
        window = max(window, len(self.stream) - drift.replay_examples)
        runs = sample_runs(
            0, window, drift.finetune_reservoir_examples, RUN_LENGTH, random.Random(self.seed)
        )
        reservoir = [self.stream[i] for start, end in runs for i in range(start, end)]
        started = time.perf_counter()
        candidate, verdict, unseen, fallback = finetune_candidate(
            self.settings, self.learner.weights(), self.stream[window:], reservoir,
            self.learned, self.weights_at,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        self.weights_at.clear()
        self.run.finetune = {
            "finetune_s": round(seconds, 2),
            "finetune_promoted": verdict.promoted,
            "finetune_reason": verdict.reason,
            "finetune_unseen_version": unseen,
            "finetune_base_fallback": fallback,
            "finetune_replay_examples": len(self.stream) - window,
            "finetune_reservoir_examples": len(reservoir),
            "finetune_started_event": event_index_of(batch[-1]),
        }
        self.candidate = candidate if verdict.promoted else None
        self.swap_at_ts = batch[-1].ts + int(seconds * 1000)


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
    settings: Settings,
    serving: ModelWeights,
    replay: Sequence[TrainingExample],
    reservoir: Sequence[TrainingExample],
    learned: Sequence[LearnedBatch],
    weights_at: Mapping[int, ModelWeights],
) -> tuple[ModelWeights, GateVerdict, int | None, str]:
    """Split, train, and judge: what the fine-tune job does, in memory (``learned``: the
    learner's batches so far; ``weights_at``: its weights by version). The candidate starts
    from the unseen version's weights, else from ``serving`` and the reason says why.
    Returns the candidate, the verdict, the unseen version and the fallback (a key of
    ``gate.BASE_FALLBACKS``, or ``""``)."""
    train, holdout = split_replay(replay, settings.drift.finetune_holdout_fraction)
    unseen = unseen_version(learned, holdout[0].ts) if holdout else None
    base = weights_at.get(unseen) if unseen is not None else None
    candidate = train_candidate(settings, serving if base is None else base, train, reservoir)
    verdict, candidate = judge(settings, candidate, serving, holdout, learned, settings.learner)
    fallback = ""  # as the job's ``_candidate_base``, the kept weights as its registry
    if base is None:
        fallback = "no_learner_signal" if unseen is None else "version_not_loadable"
    reason = base_fallback_note(verdict.reason, fallback, unseen)
    return candidate, replace(verdict, reason=reason), unseen, fallback


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
    seeds: range,
    finetune: bool,
    pipeline: bool = False,
) -> dict[str, Any]:
    """Every figure of the benchmark as one dict (see the module docstring): detection and
    false alarms flat, recovery per scenario."""
    features = FeatureConfig.from_settings(settings.flow)
    result: dict[str, Any] = {"events_per_scenario": events, "seeds": list(seeds)}
    delay_keys = {
        Scenario.ABRUPT: "detection_delay_events",
        Scenario.GRADUAL: "gradual_detection_delay_events",
        Scenario.NEW_ITEMS: "new_items_detection_delay_events",
    }
    with Progress(transient=True) as progress:
        for scenario in RECOVERY_SCENARIOS:
            key = delay_keys[scenario]
            delays: list[int] = []
            runs: list[dict[str, Any]] = []
            task = progress.add_task(f"{scenario.value} scenario", total=len(seeds))
            for seed in seeds:
                examples, truth = scenario_examples(
                    GeneratorConfig(scenario, events=events, seed=seed), features
                )
                plain = run_stream(settings, examples, with_finetune=False, seed=seed)
                delay = first_alert_delay(plain, truth)
                delays += [] if delay is None else [delay]
                start = truth.drift_start or 0
                result.setdefault(f"{key}_by_detector", []).append(
                    sorted({a.detector for i, a in plain.alert_events if i >= start})
                )
                seed_run: dict[str, Any] = {
                    "seed": seed,
                    "recovery_events_without_finetune": recovery_events(plain, truth),
                }
                if finetune:
                    tuned = run_stream(settings, examples, with_finetune=True, seed=seed)
                    seed_run["recovery_events"] = recovery_events(tuned, truth)
                    seed_run.update(tuned.finetune)
                runs.append(seed_run)
                progress.advance(task)
            result[key] = statistics.median(delays) if delays else None
            result[f"{key}_missed"] = len(seeds) - len(delays)
            result[scenario.value] = recovery_summary(runs)
        alarms, examples_seen = stationary_false_alarms(settings, stationary_examples, 0, progress)
        result["stationary_examples"] = examples_seen
        result["stationary_alarms"] = alarms
        result["false_alarms_per_million"] = alarms / examples_seen * 1e6
        result["recovery_window_examples"] = RECOVERY_WINDOW
    if pipeline:
        result.update(run_pipeline_benchmark(settings, events))
    return result


def recovery_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario's seeds: medians of the recovery figures, whether the fine-tune was
    promoted (in how many seeds), and every seed's own figures."""

    def median(name: str) -> float | None:
        values = [run[name] for run in runs if run.get(name) is not None]
        return statistics.median(values) if values else None

    promoted = sum(1 for run in runs if run.get("finetune_promoted"))
    summary: dict[str, Any] = {
        "finetune_promoted": promoted > len(runs) / 2,
        "finetune_promoted_seeds": promoted,
        "finetune_skipped_seeds": sum(1 for run in runs if "finetune_skipped" in run),
        "recovery_events": median("recovery_events"),
        "recovery_events_without_finetune": median("recovery_events_without_finetune"),
        "runs": runs,
    }
    without, tuned = summary["recovery_events_without_finetune"], summary["recovery_events"]
    summary["recovery_ratio"] = round(tuned / without, 3) if tuned and without else None
    return summary


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

    from prometheus_client import CollectorRegistry

    from online_models.alerts.tail import latest_alerts
    from online_models.drift.loop import run_drift_monitor
    from online_models.finetune.status import read_status
    from online_models.learner.loop import Learner
    from streamrec.kafka_clients import ensure_topics, make_producer
    from streamrec.redis_connection import connect_redis
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
    client = connect_redis(config.redis.redis_url.get_secret_value())
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
