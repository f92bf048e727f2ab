"""``bench learner --step-only`` and the batch preparation it overlaps with the step."""

from __future__ import annotations

import numpy as np
import torch

from loadtest.bench.learner_step import run_step_benchmark
from online_models.learner.prepared_batch import prefetched, prepare_batch
from streamrec.settings import LearnerSettings, ModelSettings, Settings
from streamrec.training_examples import TrainingExample

SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=6)


def chain(count: int) -> list[TrainingExample]:
    return [
        TrainingExample(
            f"e{n}",
            f"s{n}",
            tuple(f"i{(n + k) % 40}" for k in range(n % 4)),
            f"i{(n + n % 4) % 40}",
            n,
        )  # fmt: skip
        for n in range(count)
    ]


def test_step_only_reports_throughput_per_batch_size_and_the_fixed_overhead() -> None:
    settings = Settings(model=SMALL, learner=LearnerSettings(sampled_negatives=16))
    report = run_step_benchmark(settings, chain(480), torch.device("cpu"), (8, 16, 32))
    assert set(report["examples_per_s"]) == {"8", "16", "32"}
    assert all(rate > 0 for rate in report["examples_per_s"].values())
    assert report["batch_sizes"]["8"]["steps"] == 45  # 60 batches, the first 15 warm up
    assert isinstance(report["fixed_overhead_ms"], float)
    assert report["gpu_busy_share"] is None and report["device"] == "cpu"
    assert report["encoder_compiled"] is False  # the suite runs learners eagerly (conftest)


def test_prefetched_batches_come_in_order_as_prepare_batch_builds_them() -> None:
    examples = chain(50)
    batches = [examples[s : s + 16] for s in range(0, 50, 16)]
    prepared = list(prefetched(batches))
    assert [len(b) for b in prepared] == [16, 16, 16, 2]
    for batch, got in zip(batches, prepared, strict=True):
        want = prepare_batch(batch)
        assert got.item_ids == want.item_ids
        np.testing.assert_array_equal(got.history_slots, want.history_slots)


def test_a_prepared_batch_holds_each_history_and_target_as_slots_of_distinct_ids() -> None:
    batch = prepare_batch(
        [
            TrainingExample("a", "s", ("x", "y"), "z", 1),
            TrainingExample("b", "t", (), "x", 2, "purchase", 5.0),
        ]
    )
    assert batch.item_ids == ["x", "y", "z"]
    assert batch.history_slots.tolist() == [[0, 1], [-1, -1]]
    assert batch.target_slots.tolist() == [2, 0]
    assert batch.weights.tolist() == [1.0, 5.0]
