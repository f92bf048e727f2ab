"""A learner killed with SIGKILL restarts from its last version and loses no example."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from online_models.registry.weight_registry import WeightRegistry
from streamrec.settings import Settings
from tests.integration.test_learner import make_examples, produce, small_settings
from tests.process_env import process_env

pytestmark = pytest.mark.faults


def learner_env(settings: Settings) -> dict[str, str]:
    model, learner = settings.model, settings.learner
    return process_env(
        settings,
        STREAMREC_MODEL_HIDDEN_SIZE=str(model.hidden_size),
        STREAMREC_MODEL_NUM_LAYERS=str(model.num_layers),
        STREAMREC_MODEL_NUM_HEADS=str(model.num_heads),
        STREAMREC_MODEL_MAX_SEQ_LEN=str(model.max_seq_len),
        STREAMREC_LEARNER_BATCH_SIZE=str(learner.batch_size),
        STREAMREC_LEARNER_BATCH_MS=str(learner.batch_ms),
        STREAMREC_LEARNER_PUBLISH_EVERY_STEPS=str(learner.publish_every_steps),
        STREAMREC_LEARNER_SNAPSHOT_EVERY=str(learner.snapshot_every),
        STREAMREC_LEARNER_SAMPLED_NEGATIVES=str(learner.sampled_negatives),
        STREAMREC_LEARNER_METRICS_PORT="0",
        STREAMREC_LEARNER_CONSUMER_GROUP=learner.consumer_group,
        OMP_NUM_THREADS="1",
    )


def start_learner(settings: Settings, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "learn", *extra],
        env=learner_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


def examples_seen(registry: WeightRegistry) -> int:
    """``examples_seen`` of the registry's current version (0 before the first)."""
    current = registry.current_version()
    info = registry.info(current) if current is not None else None
    return info.examples_seen if info else 0


def wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_killed_learner_resumes_from_its_last_version_without_losing_examples(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    config = small_settings(settings, batch_size=16, publish_every_steps=1, snapshot_every=4)
    registry = WeightRegistry(config, redis_client)

    def seen() -> int:
        return examples_seen(registry)

    produce(config, make_examples(400))
    log = tmp_path / "learner.log"
    first = start_learner(config, log)
    try:
        wait_until(lambda: seen() >= 64, 90, "a few published versions")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    killed_at = seen()
    produce(config, make_examples(100, seed=9))
    second = start_learner(config, log, "--idle-exit-s", "3")
    assert second.wait(120) == 0, log.read_text()[-2000:]
    final = registry.info(registry.current_version())
    assert killed_at >= 64
    assert final.examples_seen == 500  # exactly once in the published lineage
    assert sum(final.offsets.values()) == 500
