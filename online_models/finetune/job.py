"""One full fine-tune: replay, train, judge, promote or reject, and say so.

Runs in its own process (started by the drift monitor, or ``streamrec finetune``):

1. read the last ``replay_examples`` training examples back from Kafka (``replay``) and a
   reservoir of older ones sampled from the same topic (``reservoir``);
2. split the recent ones in time: older part to train, most recent part held out (``gate``);
3. train backbone and head on the training part and the down-weighted reservoir, with the
   same code as ``streamrec train`` (``train_candidate``), on ``TrainSettings.device``,
   starting from the version the learner ranked the first held-out batch with (it had
   learned none of the held-out examples: ``gate.unseen_version``, from the learner's
   signals); where no signal names it or it no longer loads (pruned), from the current
   version, and the verdict's reason says so (``base_fallback``);
4. run the candidate through the held-out examples as the online learner does (each
   micro-batch ranked, then learned), put its prequential HR@20 against what the serving
   lineage ranked on them before learning them (the learner's signals; ``judge``) and let
   the gate decide;
5. promoted: publish the candidate, with the held-out span learned, as a snapshot and
   make it current (the learner reloads it and continues from there), or, with
   ``STREAMREC_DRIFT_ROLLOUT=canary``, serve it on the experiment's canary arm first
   (verdict ``canary``; ``canary_rollout``); rejected: leave serving alone and raise an
   alert saying why.

The outcome goes to the drift status hash and, as an alert, to every sink; the lock is
then re-armed for the cooldown whatever happened.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import redis

from online_models.alerts.sinks import send_alert
from online_models.finetune.canary_rollout import start_canary
from online_models.finetune.gate import (
    LearnedBatch,
    base_fallback_note,
    split_replay,
    unseen_version,
)
from online_models.finetune.replay import read_replay
from online_models.finetune.reservoir import read_reservoir
from online_models.finetune.status import record_finetune, start_cooldown
from online_models.learner.signal import LearnerSignal
from online_models.model.weights import ModelWeights
from online_models.registry.weight_registry import WeightLoadError, WeightRegistry
from streamrec.alerts import make_alert
from streamrec.redis_connection import connect_redis
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings, fitted_values, with_fitted
from streamrec.structured_log import configure_logging, log_event
from streamrec.topics import Topics
from streamrec.training_examples import TrainingExample

logger = logging.getLogger("streamrec.finetune")


@dataclass(frozen=True, slots=True)
class FinetuneRequest:
    """Why a fine-tune runs (an alert id or ``manual``) and what it replays."""

    trigger: str
    replay_examples: int
    since_ms: int | None = None


@dataclass(frozen=True, slots=True)
class FinetuneReport:
    finetune_id: str
    trigger: str
    verdict: str  # promoted | canary | rejected | failed
    reason: str
    serving_version: int | None
    candidate_version: int | None
    candidate_hr: float
    serving_hr: float
    train_examples: int
    holdout_examples: int
    duration_s: float
    base_version: int | None = None  # the version the candidate started from
    base_fallback: str = ""  # why it is the current version: a key of gate.BASE_FALLBACKS


def run_finetune(
    settings: Settings, client: redis.Redis, request: FinetuneRequest
) -> FinetuneReport:
    """Run one fine-tune to its verdict (see the module docstring); never leaves the lock held."""
    keys = RedisKeys(settings.redis.key_prefix)
    finetune_id = uuid.uuid4().hex[:12]
    started = time.monotonic()
    record_finetune(
        client,
        keys,
        {
            "finetune_id": finetune_id,
            "finetune_trigger": request.trigger,
            "finetune_started_ms": str(int(time.time() * 1000)),
            "finetune_verdict": "running",
        },
    )
    log_event(logger, "finetune_started", finetune_id=finetune_id, trigger=request.trigger)
    try:
        report = _finetune(settings, client, request, finetune_id, started)
    except Exception as exc:
        log_event(
            logger, "finetune_failed", logging.ERROR, finetune_id=finetune_id, error=repr(exc)
        )
        report = FinetuneReport(
            finetune_id, request.trigger, "failed", repr(exc)[:500], None, None,
            float("nan"), float("nan"), 0, 0, time.monotonic() - started,
        )  # fmt: skip
    finally:
        start_cooldown(client, keys, settings.drift.finetune_cooldown_s)
    _announce(settings, client, report)
    return report


def _finetune(
    settings: Settings,
    client: redis.Redis,
    request: FinetuneRequest,
    finetune_id: str,
    started: float,
) -> FinetuneReport:
    # torch is imported here, not at module level: the drift monitor imports this module
    # to spawn the job and must not pay for torch itself.
    from online_models.finetune.training import judge, train_candidate

    topics = Topics.from_settings(settings.kafka)
    registry = WeightRegistry(settings, client)
    examples = read_replay(
        settings.kafka, topics.training_examples, request.replay_examples, request.since_ms,
        repeat_window=settings.flow.repeat_window,
    )  # fmt: skip
    drift = settings.drift
    before_ms = request.since_ms if request.since_ms is not None else _oldest_ts(examples)
    reservoir = read_reservoir(
        settings.kafka, topics.training_examples, drift.finetune_reservoir_examples, before_ms,
        seed=before_ms,
    )  # fmt: skip
    train, holdout = split_replay(examples, drift.finetune_holdout_fraction)
    keys = RedisKeys(settings.redis.key_prefix)
    unseen = (
        unseen_version(_learned_batches(client, keys, holdout), holdout[0].ts) if holdout else None
    )
    base, fallback = _candidate_base(registry, unseen)
    log_event(
        logger,
        "finetune_replayed",
        logging.WARNING if fallback else logging.INFO,
        finetune_id=finetune_id,
        train=len(train),
        reservoir=len(reservoir),
        holdout=len(holdout),
        unseen_version=unseen,
        base_version=base.version,
        base_fallback=fallback,
    )
    candidate = train_candidate(settings, base, train, reservoir)
    serving = registry.load()  # the learner may have moved on while we trained
    learned = _learned_batches(client, keys, holdout)
    info = registry.info(serving.version)  # the learner's fitted knobs travel in it
    learner = with_fitted(settings.learner, fitted_values(info.metrics) if info else {})
    verdict, candidate = judge(settings, candidate, serving, holdout, learned, learner)
    reason = base_fallback_note(verdict.reason, fallback, unseen)
    candidate_version: int | None = None
    canary = settings.drift.rollout == "canary"
    if verdict.promoted:
        publication = registry.publish_snapshot(
            candidate,
            source=f"finetune:{finetune_id}",
            examples_seen=len(train) + len(holdout),
            metrics={"holdout_hr20": verdict.candidate_hr, "serving_hr20": verdict.serving_hr},
            make_current=False,
        )
        candidate_version = publication.version
        if canary:
            start_canary(settings, client, candidate_version, serving.version)
        else:
            registry.set_current(candidate_version)
            record_finetune(client, keys, {"previous_current": str(serving.version)})
    return FinetuneReport(
        finetune_id,
        request.trigger,
        ("canary" if canary else "promoted") if verdict.promoted else "rejected",
        reason,
        serving.version,
        candidate_version,
        verdict.candidate_hr,
        verdict.serving_hr,
        len(train),
        len(holdout),
        time.monotonic() - started,
        base.version,
        fallback,
    )


def _candidate_base(registry: WeightRegistry, unseen: int | None) -> tuple[ModelWeights, str]:
    """The weights the candidate starts from, and ``""`` or why they are the current ones
    (a key of ``gate.BASE_FALLBACKS``).

    ``unseen`` (``gate.unseen_version``) loads as itself or, where its chain is broken, as
    an older version of the lineage: neither learned a held-out example. When there is no
    ``unseen``, or it no longer loads (pruned by ``keep_snapshots``), the current version
    stands in, though it learned them: the verdict then favours the candidate.
    """
    if unseen is None:
        return registry.load(), "no_learner_signal"
    try:
        return registry.load(unseen), ""
    except WeightLoadError:
        return registry.load(), "version_not_loadable"


def _oldest_ts(examples: Sequence[TrainingExample]) -> int:
    """Where the reservoir ends for a replay without a start time: its oldest example."""
    return min((example.ts for example in examples), default=int(time.time() * 1000))


def _learned_batches(
    client: redis.Redis, keys: RedisKeys, holdout: Sequence[TrainingExample]
) -> list[LearnedBatch]:
    """The learner's signals back to the oldest held-out example, in the order it wrote them."""
    if not holdout:
        return []
    first_ts = holdout[0].ts
    batches: list[LearnedBatch] = []
    cursor = "+"
    while True:
        entries = client.xrevrange(keys.learner_signals, max=cursor, count=1000)
        for _, fields in entries:
            try:
                signal = LearnerSignal.from_fields(fields)
            except ValueError:
                continue
            if signal.event_ts_ms is None:
                continue  # without event time it cannot be placed in the span
            if signal.event_ts_ms < first_ts:
                return batches[::-1]
            batches.append(
                LearnedBatch(
                    signal.event_ts_ms, signal.examples, signal.hits_at_20, signal.model_version
                )
            )
        if len(entries) < 1000:
            return batches[::-1]
        last_id = entries[-1][0]
        cursor = f"({last_id.decode() if isinstance(last_id, bytes) else last_id}"


def _announce(settings: Settings, client: redis.Redis, report: FinetuneReport) -> None:
    """Status hash, structured log and an alert on every sink."""
    keys = RedisKeys(settings.redis.key_prefix)
    record_finetune(
        client,
        keys,
        {
            "finetune_verdict": report.verdict,
            "finetune_reason": report.reason,
            "finetune_finished_ms": str(int(time.time() * 1000)),
            "finetune_duration_s": f"{report.duration_s:.3f}",
            "finetune_candidate_hr": f"{report.candidate_hr:.6f}",
            "finetune_serving_hr": f"{report.serving_hr:.6f}",
            "finetune_candidate_version": str(report.candidate_version or ""),
            "finetune_serving_version": str(report.serving_version or ""),
        },
    )
    log_event(logger, "finetune_finished", **asdict(report))
    alert = make_alert(
        f"finetune_{report.verdict}",
        "holdout_hr@20",
        report.serving_hr,
        report.candidate_hr,
        report.train_examples + report.holdout_examples,
        report.candidate_version
        if report.verdict in ("promoted", "canary")
        else report.serving_version,
        message=f"fine-tune {report.finetune_id} ({report.trigger}): {report.reason}",
    )
    send_alert(settings, client, alert)


def run_finetune_process(settings: Settings, request: FinetuneRequest) -> None:
    """Entry point of the process the drift monitor spawns."""
    configure_logging(settings.log_level)
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    report = run_finetune(settings, client, request)
    if report.verdict == "failed":
        raise SystemExit(1)
