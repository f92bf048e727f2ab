"""Examples the flow emitted two and three times are learned once, across a SIGKILL."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import redis

from online_models.registry.weight_registry import WeightRegistry
from streamrec.settings import Settings
from tests.faults.test_learner_restart import examples_seen, start_learner, wait_until
from tests.integration.test_learner import make_examples, produce, small_settings

pytestmark = pytest.mark.faults


def test_repeats_are_learned_once_by_a_learner_killed_and_restarted(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    config = small_settings(settings, batch_size=16, publish_every_steps=1, snapshot_every=4)
    registry = WeightRegistry(config, redis_client)

    def seen() -> int:
        return examples_seen(registry)

    examples = make_examples(300, seed=11)
    produce(config, examples)
    produce(config, examples[:200])  # the flow was killed: it emitted them again
    log = tmp_path / "learner.log"
    first = start_learner(config, log)
    try:
        wait_until(lambda: seen() >= 64, 90, "a few published versions")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    # A third copy of some (one learned before the kill, some perhaps not), and new ones.
    produce(config, [*examples[:30], *examples[250:280], *make_examples(100, seed=12)])
    second = start_learner(config, log, "--idle-exit-s", "3")
    assert second.wait(120) == 0, log.read_text()[-2000:]
    final = registry.info(registry.current_version())
    assert final is not None
    assert final.examples_seen == 400  # 300 + 100 distinct, whatever was repeated
    assert sum(final.offsets.values()) == 300 + 200 + 160  # every record was read
