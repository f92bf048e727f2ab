"""Where a learner batch makes the host wait for the device.

On a GPU every op whose output size or value the host must know (a selection by mask,
``nonzero``, ``unique``, ``item``) waits for the device to finish all queued work, and so
does a copy from ordinary host memory (``online_models.model.device.to_device`` avoids
that one). Counted on CPU with a dispatch mode that sees every aten op, with the shapes
the code keeps on a GPU (``selects_freely`` off), so the count holds without a GPU: no
op of a batch reads the device; the host reads the steps' guard figures and the ranks
once, at the end of the batch, through ``.tolist()`` / ``.cpu()`` (which do not dispatch
on CPU).
"""

from __future__ import annotations

import sys
import traceback
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from online_models.learner import micro_batch
from online_models.learner.micro_batch import HeadLearner
from online_models.model import covisitation
from online_models.model.covisitation import CovisitationRule, update_covisitation
from online_models.model.recommender import INITIAL_BLEND, random_weights
from streamrec.settings import LearnerSettings, ModelSettings
from tests.unit.online_models.learner.test_step_formulations import drifting_stream

SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=6)
READS = {"nonzero", "_unique2", "unique_dim", "unique_consecutive", "_local_scalar_dense"}
READS |= {"masked_select", "item", "is_nonzero", "equal"}
MASK_INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}


class DeviceReads(TorchDispatchMode):
    """Counts the ops that read device data back to the host, by the model function
    that called them."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: Counter[tuple[str, str]] = Counter()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        name = func.__name__.split(".")[0]
        by_mask = name in MASK_INDEXING and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool
            for index in (args[1] if len(args) > 1 and isinstance(args[1], list | tuple) else ())
        )
        if name in READS or by_mask:
            self.sites[(name, _caller())] += 1
        return func(*args, **(kwargs or {}))


def _caller() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        if "online_models" in frame.f_code.co_filename:
            return frame.f_code.co_name
        frame = frame.f_back
    return "?"


def test_with_a_gpus_shapes_no_op_of_a_batch_waits_for_the_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for module in (micro_batch, covisitation):
        monkeypatch.setattr(module, "selects_freely", lambda device: False)
    weights = random_weights(120, SMALL)
    learner = HeadLearner.from_weights(
        weights, LearnerSettings(sampled_negatives=64), covisitation=CovisitationRule()
    )
    stream = drifting_stream(640)
    for start in range(0, 512, 64):  # the table fills, new items keep arriving
        learner.learn(stream[start : start + 64])
    reads = DeviceReads()
    with reads:
        outcome = learner.learn(stream[512:576])
    assert outcome.skipped == "" and outcome.new_items > 0
    assert (learner.model.covis_items >= 0).sum() > 100  # evidence to gather and update
    # ``ranking_totals`` sums the ranks on the host, after they were read as a whole
    assert {site for site in reads.sites if site[1] != "ranking_totals"} == set()
    assert reads.sites  # the mode does see reads (those host sums)


def test_a_gpus_shapes_rank_and_learn_as_the_cpus_selections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    weights = random_weights(120, SMALL)
    stream = drifting_stream(640)

    def run() -> tuple[np.ndarray, list[float], HeadLearner]:
        learner = HeadLearner.from_weights(
            weights, LearnerSettings(sampled_negatives=64), covisitation=CovisitationRule()
        )
        outcomes = [learner.learn(stream[start : start + 64]) for start in range(0, 640, 64)]
        ranks = np.concatenate([outcome.ranks for outcome in outcomes])
        return ranks, [outcome.loss for outcome in outcomes], learner

    cpu_ranks, cpu_losses, cpu = run()
    for module in (micro_batch, covisitation):
        monkeypatch.setattr(module, "selects_freely", lambda device: False)
    gpu_ranks, gpu_losses, gpu = run()
    assert (cpu_ranks < 20).mean() > 0.1
    assert (cpu_ranks != gpu_ranks).mean() <= 0.01  # summation order: rare near-ties only
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4)
    assert cpu.model.covis_blend.item() != INITIAL_BLEND  # the blend learned
    for name in ("item_table", "covis_weight", "covis_blend"):
        np.testing.assert_allclose(
            getattr(gpu.model, name).detach().numpy(),
            getattr(cpu.model, name).detach().numpy(),
            rtol=1e-4, atol=1e-5,
        )  # fmt: skip
    assert torch.equal(gpu.model.covis_items, cpu.model.covis_items)


@pytest.mark.parametrize(
    ("rank_dtype", "read_in", "read_line"),
    [("float32", "learn", ".tolist()"), ("bfloat16", "_rank", "uncertain.cpu()")],
)
def test_on_a_device_without_data_a_batch_runs_up_to_its_one_read(
    rank_dtype: str, read_in: str, read_line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The learner on PyTorch's ``meta`` device (shapes, no data): every tensor the step
    touches must be on the learner's device (a CPU tensor mixed in raises) and nothing may
    read the device, or it raises there. So the first error is the batch's one read: the
    guard's figures (or, for the bfloat16 pass, its rows to re-check)."""
    weights = random_weights(120, SMALL)
    settings = LearnerSettings(sampled_negatives=64, rank_dtype=rank_dtype)
    learner = HeadLearner.from_weights(weights, settings, torch.device("meta"), CovisitationRule())
    monkeypatch.setattr(learner.dense_optimizer, "step", lambda: None)  # no meta kernel
    batch = drifting_stream(400)[336:]  # items beyond the 120 known: new rows too
    with pytest.raises(NotImplementedError, match="meta") as raised:
        learner.learn(batch)
    frame = [f for f in traceback.extract_tb(raised.tb) if "online_models" in f.filename][-1]
    assert (frame.name, read_line in (frame.line or "")) == (read_in, True)
    # the table update after the read: host-sized arrays, no read at all
    changed = update_covisitation(
        learner.model.covis_items, learner.model.covis_weight, np.array([3, 3, 5]),
        np.array([4, 6, 3]), np.array([1.0, 0.5, 1.0], np.float32), 0.98,
    )  # fmt: skip
    assert changed.device.type == "meta" and changed.shape == (2,)
