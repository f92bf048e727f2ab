"""A fine-tune rolled out as a canary, on the real broker and Redis: a candidate that passed
the gate serves the canary arm instead of becoming current; the canary watch reads
impressions and clicks of both arms, promotes a canary that is not worse and rolls back
one that is (registry pointers, status and alert checked), and a restarted watch counts
every impression exactly once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from online_models.drift.canary_loop import CanaryLoop
from online_models.drift.canary_watch import CanaryVerdict
from online_models.drift.metrics import DriftMetrics
from online_models.finetune.canary_rollout import start_canary
from online_models.finetune.job import FinetuneRequest, run_finetune
from online_models.finetune.status import read_status
from online_models.model.recommender import random_weights
from online_models.model.weights import ITEM_TABLE
from online_models.oncall import model_status_report
from online_models.registry.weight_registry import WeightRegistry
from streamrec.alerts import Alert, Severity, alert_from_stream
from streamrec.events import Event, encode_event
from streamrec.kafka_clients import make_producer
from streamrec.redis_keys import RedisKeys
from streamrec.settings import ExperimentSettings, Settings, TrainSettings
from streamrec.topics import Topics
from streamrec.training_examples import TrainingExample, encode_example
from tests.conftest import tiny_model

pytestmark = pytest.mark.integration

ITEMS = ("item-0", "item-1", "item-2")


def canary_settings(settings: Settings, min_impressions: int) -> Settings:
    drift = settings.drift.model_copy(
        update={
            "rollout": "canary",
            "canary_min_impressions": min_impressions,
            "canary_deadline_s": 600.0,
        }
    )
    experiment = ExperimentSettings(arms={"online": 0.5, "canary": 0.5}, control="online")
    flow = settings.flow.model_copy(update={"exposure_horizon_s": 1.0})
    return settings.model_copy(
        update={
            "model": tiny_model(settings), "drift": drift, "experiment": experiment, "flow": flow,
        }
    )  # fmt: skip


def test_a_candidate_that_passes_the_gate_serves_the_canary_arm_not_the_current_pointer(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = canary_settings(settings, min_impressions=40).model_copy(
        update={"train": TrainSettings(epochs=3, batch_size=64)}
    )
    config = config.model_copy(
        update={"drift": config.drift.model_copy(update={"finetune_min_holdout": 50})}
    )
    registry = WeightRegistry(config, redis_client)
    serving = registry.publish_snapshot(random_weights(100, config.model), source="train").version
    # A stream a model can learn (each item is followed by the next one) and an untrained
    # serving model: the candidate beats it on the held-out examples.
    producer = make_producer(config.kafka)
    topic = Topics.from_settings(config.kafka).training_examples
    for n in range(600):
        item = n % 100
        example = TrainingExample(
            f"e{n}", f"s{n}", (f"item-{item}",), f"item-{(item + 1) % 100}", 1_700_000_000_000 + n,
            source_topic="clicks", source_partition=0, source_offset=n,
        )  # fmt: skip
        producer.produce(topic, encode_example(example), key=example.session_id.encode())
    assert producer.flush(10) == 0

    report = run_finetune(config, redis_client, FinetuneRequest("manual", 600))

    assert report.verdict == "canary", report.reason
    assert registry.current_version() == serving, "the control keeps serving"
    assert registry.canary_version() == report.candidate_version != serving
    status = read_status(redis_client, RedisKeys(config.redis.key_prefix))
    assert status["canary_verdict"] == "running"
    assert status["canary_control_version"] == str(serving)
    assert [a.detector for a in alerts(redis_client, config)] == ["finetune_canary"]


def publish_canary(settings: Settings, client: redis.Redis) -> tuple[int, int]:
    """(control, canary): a current version and a candidate rolled out as the canary."""
    registry = WeightRegistry(settings, client)
    control = registry.publish_snapshot(random_weights(3, settings.model), source="t").version
    candidate = random_weights(3, settings.model, seed=1)
    canary = registry.publish_snapshot(candidate, source="t", make_current=False).version
    start_canary(settings, client, canary, control)
    return control, canary


def shown_and_clicked(arm: str, version: int, sessions: int, clicks: int) -> list[Event]:
    """``sessions`` impressions on ``arm``; the first ``clicks`` of them get a click on a
    shown item that cites the request (the rest: nothing within the horizon)."""
    now = int(time.time() * 1000)
    events = []
    for n in range(sessions):
        session, request = f"{arm}-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        events.append(
            Event(
                request,
                "impression",
                session,
                now,
                request_id=request,
                items=ITEMS,
                model_version=version,
                arm=arm,
            )  # fmt: skip
        )
        if n < clicks:
            events.append(
                Event(uuid.uuid4().hex, "click", session, now + 5, "item-1", request_id=request)
            )
    return events


def produce(settings: Settings, events: Iterable[Event]) -> None:
    topics = Topics.from_settings(settings.kafka)
    producer = make_producer(settings.kafka)
    for event in events:
        topic = topics.for_event_type(event.type)
        producer.produce(topic, encode_event(event), key=event.session_id.encode())
    assert producer.flush(10) == 0


def run_until(loop: CanaryLoop, done: object, timeout_s: float = 30.0) -> CanaryVerdict | None:
    """Read and check like the drift monitor does until ``done()`` or a verdict."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        loop.read()
        verdict = loop.check()
        if verdict is not None or done():  # type: ignore[operator]
            return verdict
        time.sleep(0.05)  # the housekeeping pace, scaled down
    raise AssertionError("the canary watch reached no verdict in time")


def alerts(client: redis.Redis, settings: Settings) -> list[Alert]:
    entries = client.xrange(RedisKeys(settings.redis.key_prefix).alerts)
    return [alert for _, fields in entries if (alert := alert_from_stream(fields)) is not None]


def test_a_canary_that_is_not_worse_is_promoted_and_guarded_like_a_promotion(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = canary_settings(settings, min_impressions=40)
    control, canary = publish_canary(config, redis_client)
    shown = model_status_report(config, redis_client)
    assert (shown["canary_version"], shown["last_canary_verdict"]) == (canary, "running")
    produce(config, shown_and_clicked("canary", canary, 40, 20))
    produce(config, shown_and_clicked("online", control, 40, 20))
    promoted: list[int] = []
    loop = CanaryLoop(config, redis_client, DriftMetrics(CollectorRegistry()), promoted.append)
    try:
        verdict = run_until(loop, lambda: False)
    finally:
        loop.close()
    assert verdict is not None and verdict.action == "promote", verdict
    assert (verdict.canary.impressions, verdict.canary.clicked) == (40, 20)
    assert (verdict.control.impressions, verdict.control.clicked) == (40, 20)
    registry = WeightRegistry(config, redis_client)
    current = registry.current_version()
    assert registry.canary_version() is None
    assert current is not None and current > canary and promoted == [current]
    np.testing.assert_array_equal(
        registry.load(current).tensors[ITEM_TABLE], registry.load(canary).tensors[ITEM_TABLE]
    )
    shown = model_status_report(config, redis_client)
    assert (shown["canary_version"], shown["last_canary_verdict"]) == (None, "promoted")
    status = read_status(redis_client, RedisKeys(config.redis.key_prefix))
    assert status["previous_current"] == str(control), "an automatic rollback returns here"
    assert [a.detector for a in alerts(redis_client, config)] == ["canary_promoted"]


def test_a_worse_canary_is_rolled_back_and_a_restarted_watch_counts_each_impression_once(
    settings: Settings, redis_client: redis.Redis
) -> None:
    config = canary_settings(settings, min_impressions=60)
    control, canary = publish_canary(config, redis_client)
    first_canary = shown_and_clicked("canary", canary, 30, 3)
    produce(config, first_canary + shown_and_clicked("online", control, 30, 24))
    registry = CollectorRegistry()
    loop = CanaryLoop(config, redis_client, DriftMetrics(registry), lambda _: None)
    try:
        counted = lambda: loop.watch is not None and loop.watch.canary.impressions == 30  # noqa: E731
        assert run_until(loop, counted) is None
    finally:
        loop.close()  # the monitor stops (or dies) with half of the traffic counted
    assert registry.get_sample_value("streamrec_canary_impressions", {"arm": "canary"}) == 30
    # Served again after the restart (at-least-once): the join keeps the first copy.
    repeated = first_canary[-2:]
    produce(
        config,
        shown_and_clicked("canary", canary, 30, 3)
        + shown_and_clicked("online", control, 30, 24)
        + repeated,
    )
    restarted = CanaryLoop(config, redis_client, DriftMetrics(CollectorRegistry()), lambda _: None)
    try:
        verdict = run_until(restarted, lambda: False)
    finally:
        restarted.close()
    assert verdict is not None and verdict.action == "roll_back", verdict
    assert (verdict.canary.impressions, verdict.canary.clicked) == (60, 6)
    assert (verdict.control.impressions, verdict.control.clicked) == (60, 48)
    weights = WeightRegistry(config, redis_client)
    assert weights.canary_version() is None and weights.current_version() == control
    status = read_status(redis_client, RedisKeys(config.redis.key_prefix))
    assert status["canary_verdict"] == "rolled_back" and "CTR" in status["canary_reason"]
    [alert] = alerts(redis_client, config)
    assert alert.detector == "canary_rolled_back" and alert.severity is Severity.WARNING
    assert alert.model_version == canary and alert.runbook.endswith("#canary-rolled-back")
