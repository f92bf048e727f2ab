"""Where a learner batch makes the host wait for the device.

On a GPU every op whose output size or value the host must know (a selection by mask,
``nonzero``, ``unique``, ``item``) waits for the device to finish all queued work, and so
does a copy from ordinary host memory (``online_models.model.device.to_device`` avoids
that one). Counted on CPU with a dispatch mode that sees every aten op, so the count
holds without a GPU: a batch's reads are the co-visitation evidence (a compaction and a
``unique``, once per encoding of the histories), besides the ranks and each step's guard
(read through ``.cpu()`` / ``.tolist()``, which do not dispatch on CPU).
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from online_models.learner.micro_batch import HeadLearner
from online_models.model import covisitation
from online_models.model.covisitation import CovisitationRule
from online_models.model.recommender import random_weights
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


def test_a_batch_reads_the_device_only_for_the_evidence_of_its_encodings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the shapes a GPU gets: CPU code may select by data, where that costs no wait
    monkeypatch.setattr(covisitation, "selects_freely", lambda device: False)
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
    # ``ranking_totals`` sums the ranks on the host (they are read once, as a whole)
    device = {site: n for site, n in reads.sites.items() if site[1] != "ranking_totals"}
    encodings = learner.settings.steps_per_batch  # at most one per step: new items re-encode
    assert set(device) <= {("nonzero", "_evidence"), ("_unique2", "_evidence")}
    assert 0 < sum(device.values()) <= 2 * encodings
