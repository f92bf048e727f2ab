"""The drift monitor killed and restarted: no alert twice, no signal skipped, dead webhook ok.

The learner is simulated by writing its signal records straight into the Redis stream
(the fields ``online_models.learner.loop`` writes), so the test is about the monitor alone.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from online_models.alerts.tail import latest_alerts
from online_models.drift.loop import DriftLoop
from online_models.finetune.status import read_status
from streamrec.redis_keys import RedisKeys
from streamrec.settings import DriftSettings, Settings
from tests.conftest import free_port

pytestmark = pytest.mark.faults


def write_signals(client: redis.Redis, keys: RedisKeys, rate: float, batches: int) -> None:
    rng = np.random.default_rng(int(rate * 1000) + batches)
    pipe = client.pipeline()
    for _ in range(batches):
        fields = {"model_version": 3, "examples": 100, "hits_at_20": int(rng.binomial(100, rate)),
                  "mrr_sum": 1.0, "mean_loss": 5.0, "first_offset": 0, "last_offset": 99,
                  "ts_ms": int(time.time() * 1000)}  # fmt: skip
        pipe.xadd(keys.learner_signals, fields)
    pipe.execute()


def run_until(loop: DriftLoop, condition: object, timeout_s: float = 30.0) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()


def test_restart_resumes_from_the_cursor_without_repeating_alerts(
    settings: Settings, redis_client: redis.Redis
) -> None:
    dead_webhook = f"http://127.0.0.1:{free_port()}/nobody-listens"
    config = settings.model_copy(
        update={
            "drift": DriftSettings(
                consumer_group=settings.drift.consumer_group,
                detectors="hit_rate", finetune_enabled=False, metrics_port=0,
                webhook_url=dead_webhook, webhook_retries=3, webhook_backoff_s=0.5,
            )
        }
    )  # fmt: skip
    keys = RedisKeys(config.redis.key_prefix)
    write_signals(redis_client, keys, 0.45, 200)
    write_signals(redis_client, keys, 0.10, 30)

    def hit_rate_alerts() -> list[str]:
        return [a.alert_id for _, a in latest_alerts(redis_client, keys.alerts, 100)]

    first = DriftLoop(config, redis_client, CollectorRegistry())
    started = time.monotonic()
    run_until(first, lambda: len(hit_rate_alerts()) == 1 and first.cursor != "0-0")
    # The webhook retries in the background: the loop did not wait for it.
    assert time.monotonic() - started < 5
    (alert_id,) = hit_rate_alerts()
    last_signal = redis_client.xrevrange(keys.learner_signals, count=1)[0][0].decode()
    assert read_status(redis_client, keys)["signals_cursor"] == last_signal

    # A restarted monitor starts after the cursor: the old drop is not alerted again.
    second = DriftLoop(config, redis_client, CollectorRegistry())
    assert second.cursor == last_signal
    write_signals(redis_client, keys, 0.10, 5)
    run_until(second, lambda: second.cursor != last_signal, timeout_s=10)
    assert hit_rate_alerts() == [alert_id]
    assert second.monitor.signal_examples == 500  # only the new records were read
