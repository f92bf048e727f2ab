"""Drift end to end on the real broker and Redis: learner -> monitor -> alerts -> fine-tune.

The abrupt scenario's training examples go on the topic; the real online learner
(``online_models.learner.loop.Learner``) learns from them and writes its signal stream; the drift
monitor (``DriftLoop``) reads it and the examples, alerts on every sink, and spawns the
fine-tune process, whose candidate is promoted and adopted by the learner.
"""

from __future__ import annotations

import http.server
import logging
import threading
import time
from collections.abc import Callable, Iterator

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from flows.example_builder import examples_from_events
from flows.feature_config import FeatureConfig
from loadtest.synthetic_traffic import GeneratorConfig, Scenario, generate
from online_models.alerts.tail import latest_alerts
from online_models.drift.loop import run_drift_monitor
from online_models.finetune.status import read_status
from online_models.learner.loop import Learner
from online_models.registry.weight_registry import WeightRegistry
from streamrec.alerts import decode_alert
from streamrec.events import Event, parse_event
from streamrec.kafka_clients import make_producer
from streamrec.redis_keys import RedisKeys
from streamrec.settings import (
    DriftSettings,
    LearnerSettings,
    Settings,
    TrainSettings,
)
from streamrec.topics import Topics
from streamrec.training_examples import TrainingExample, encode_example
from tests.conftest import tiny_model
from tests.kafka_reading import read_topic

pytestmark = pytest.mark.integration


class WebhookReceiver:
    """A local HTTP endpoint recording the JSON bodies posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers["Content-Length"])
                received.append(orjson.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


def drift_settings(settings: Settings, webhook_url: str) -> Settings:
    """A tiny model and short warm-ups so a whole drift cycle fits in a test.

    The head learns slowly (one small step per batch): the drift must outrun it, which is
    the case a full fine-tune is for; the default learner follows this synthetic shift on
    its own and the gate then rightly rejects the fine-tune. Even the slow head partly heals
    before the fine-tune is due, which would skip it (``finetune_skip_recovered``, tested in
    test_drift_responses.py); here it always runs, so the whole promotion path is tested.
    """
    return settings.model_copy(
        update={
            "model": tiny_model(settings, initial_items=16),
            "learner": LearnerSettings(
                consumer_group=settings.learner.consumer_group,
                batch_size=64, batch_ms=20, publish_every_steps=5, publish_every_s=60.0,
                snapshot_every=1000, sampled_negatives=0, metrics_port=0, lr=0.003,
                row_lr=0.05, steps_per_batch=1,
            ),
            "train": TrainSettings(epochs=6, batch_size=64, lr=0.01, patience=2),
            "drift": DriftSettings(
                consumer_group=settings.drift.consumer_group,
                warmup_examples=1000, min_alert_spacing=2000, finetune_wait_examples=300,
                finetune_wait_s=2,
                finetune_lookback_s=3600, replay_examples=1500, finetune_min_holdout=100,
                finetune_cooldown_s=600, metrics_port=0, webhook_url=webhook_url,
                finetune_skip_recovered=False,
                webhook_backoff_s=0.05,
            ),
        }
    )  # fmt: skip


def abrupt_examples(events: int) -> list[TrainingExample]:
    lines, _ = generate(
        GeneratorConfig(Scenario.ABRUPT, events=events, seed=1, items=150, categories=5)
    )
    parsed = (e for e in map(parse_event, lines) if isinstance(e, Event))
    return [
        TrainingExample(
            e.example_id,
            e.session_id,
            e.history,
            e.target_item,
            e.ts,
            e.kind,
            e.weight,
            e.bought,
            e.category,
            "clicks",
            0,
            int(e.example_id.rsplit("-", 1)[1]),
        )  # fmt: skip
        for e in examples_from_events(parsed, FeatureConfig(history_len=20))
    ]


def produce(settings: Settings, examples: list[TrainingExample]) -> None:
    producer = make_producer(settings.kafka)
    topic = Topics.from_settings(settings.kafka).training_examples
    for example in examples:
        producer.produce(topic, encode_example(example), key=example.session_id.encode())
    assert producer.flush(10) == 0


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(600)  # a learner, a monitor and a training process share 2 CPUs
def test_abrupt_drift_alerts_on_every_sink_and_a_finetune_is_promoted(
    settings: Settings,
    redis_client: redis.Redis,
    webhook: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = drift_settings(settings, webhook.url)
    keys = RedisKeys(config.redis.key_prefix)
    examples = abrupt_examples(9000)
    produce(config, examples)
    metrics_registry = CollectorRegistry()
    stop = threading.Event()
    learner = Learner(config, redis_client, CollectorRegistry())
    learner.start()
    threads = [
        threading.Thread(target=learner.run, args=(stop,), daemon=True),
        threading.Thread(
            target=run_drift_monitor, args=(config, stop, metrics_registry), daemon=True
        ),
    ]
    caplog.set_level(logging.WARNING, logger="streamrec.alerts")
    for thread in threads:
        thread.start()
    try:
        stream = wait_for(
            lambda: [a for _, a in latest_alerts(redis_client, keys.alerts, 100)
                     if a.detector == "hit_rate"],
            120, "a hit-rate alert in the Redis stream",
        )  # fmt: skip
        alert = stream[0]
        assert alert.level_after < alert.level_before
        assert alert.model_version is not None and alert.runbook.endswith("#hit-rate-drop")
        on_topic = [decode_alert(m.value()) for m in read_topic(
            config.kafka, Topics.from_settings(config.kafka).alerts, 1, timeout_s=20)]  # fmt: skip
        assert alert.alert_id in {a.alert_id for a in on_topic}
        assert any(
            getattr(r, "fields", {}).get("alert_id") == alert.alert_id for r in caplog.records
        )
        alerts = metrics_registry.get_sample_value(
            "streamrec_drift_alerts_total", {"detector": "hit_rate", "severity": "warning"}
        )
        assert alerts and alerts >= 1
        last_alert = metrics_registry.get_sample_value(
            "streamrec_drift_last_alert_timestamp_seconds", {"detector": "hit_rate"}
        )
        assert last_alert and last_alert > 0
        posted = wait_for(
            lambda: [b for b in webhook.bodies
                     if b["alerts"][0]["streamrec"]["alert_id"] == alert.alert_id],
            20, "the webhook post",
        )  # fmt: skip
        assert posted[0]["alerts"][0]["labels"]["severity"] == "warning"
        status = wait_for(
            lambda: (s := read_status(redis_client, keys)).get("finetune_verdict")
            not in (None, "running") and s,
            300, "the fine-tune verdict",
        )  # fmt: skip
        assert status["finetune_trigger"] == alert.alert_id
        assert status["finetune_verdict"] == "promoted", status.get("finetune_reason")
        promoted = int(status["finetune_candidate_version"])
        registry = WeightRegistry(config, redis_client)
        assert registry.info(promoted).source.startswith("finetune:")
        verdicts = [a for _, a in latest_alerts(redis_client, keys.alerts, 100)
                    if a.detector == "finetune_promoted"]  # fmt: skip
        assert verdicts and verdicts[0].model_version == promoted
        # The learner adopts the promoted version and keeps learning on top of it.
        produce(config, examples[-600:])
        wait_for(
            lambda: any(info.parent == promoted and info.source == "learner"
                        for info in registry.versions()),
            60, "a learner version built on the promoted one",
        )  # fmt: skip
        assert redis_client.pttl(keys.finetune_lock) > 0  # cooling down: no fine-tune storm
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        learner.close()
