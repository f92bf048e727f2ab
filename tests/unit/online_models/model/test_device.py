"""Device choice in one place, size presets, and the device each model path runs on."""

from __future__ import annotations

import traceback
from typing import Any

import numpy as np
import pytest
import torch

from online_models.learner.micro_batch import HeadLearner, rank_dtype
from online_models.model import device as device_module
from online_models.model.device import pick_device, to_device
from online_models.model.recommender import random_weights
from online_models.model.scorer import SessionScorer
from online_models.offline import training
from streamrec.settings import LearnerSettings, ModelSettings, TrainSettings, with_preset
from tests.unit.online_models.learner.test_micro_batch import chain_examples

SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=5)


def test_auto_picks_cuda_only_when_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module.torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(device_module.torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="unsupported device"):
        pick_device("meta")


def test_host_arrays_reach_the_device_without_a_stream_synchronisation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = np.arange(6)[::2]  # not contiguous
    on_cpu = to_device(values, torch.device("cpu"))
    assert on_cpu.tolist() == [0, 2, 4]
    shared = np.arange(3)
    to_device(shared, torch.device("cpu"))[0] = 7  # the array's own memory: no copy
    assert shared[0] == 7
    assert to_device(values, torch.device("meta")).device.type == "meta"
    calls: list[Any] = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)

    def to(self: torch.Tensor, device: torch.device, non_blocking: bool = False) -> torch.Tensor:
        calls.append((device, non_blocking))
        return self

    monkeypatch.setattr(torch.Tensor, "to", to)
    on_gpu = to_device(values, torch.device("cuda"))
    # page-locked first, then an asynchronous copy (a plain .to() waits for the stream)
    assert calls == ["pin", (torch.device("cuda"), True)]
    assert on_gpu.tolist() == [0, 2, 4]


def test_the_ranking_pass_is_bfloat16_on_cuda_and_float32_on_cpu_unless_set() -> None:
    assert rank_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert rank_dtype("auto", torch.device("cpu")) == torch.float32
    assert rank_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_presets_set_the_sizes_an_explicit_size_still_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (
        ModelSettings(preset="large").hidden_size,
        ModelSettings(preset="large").num_layers,
    ) == (
        256,
        4,
    )
    monkeypatch.setenv("STREAMREC_MODEL_PRESET", "xl")
    monkeypatch.setenv("STREAMREC_MODEL_NUM_LAYERS", "2")
    from_env = ModelSettings()
    assert (from_env.hidden_size, from_env.num_layers, from_env.num_heads) == (512, 2, 8)
    assert (
        with_preset(from_env, "default").hidden_size
        == ModelSettings.model_fields["hidden_size"].default
    )
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelSettings(preset="huge")


def test_the_learner_and_the_scorer_keep_every_tensor_on_their_device() -> None:
    weights = random_weights(30, SMALL)
    learner = HeadLearner.from_weights(weights, LearnerSettings(device="cpu"))
    assert learner.device == torch.device("cpu")
    assert {p.device for p in learner.model.parameters()} == {torch.device("cpu")}
    scorer = SessionScorer.from_weights(weights, SMALL, torch.device("cpu"))
    ids, scores = scorer.top_k(["item-1"], 3, exclude=["item-2"])
    assert scorer.device == torch.device("cpu") and len(ids) == 3 and "item-2" not in ids
    assert scores.dtype.name == "float32"


def test_train_runs_an_epoch_on_the_device_without_reading_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dry run on PyTorch's ``meta`` device (shapes, no data): a host tensor mixed into
    a step, or a read of the device, raises where it happens. The first read must be the
    epoch's validation (its ranks), after every step of the epoch was queued."""
    monkeypatch.setattr(training, "pick_device", lambda name: torch.device("meta"))
    with pytest.raises(NotImplementedError, match="meta") as raised:
        training.train(SMALL, TrainSettings(epochs=1, batch_size=64), chain_examples(600, 60))
    frames = [f.name for f in traceback.extract_tb(raised.tb) if "online_models" in f.filename]
    assert frames[-3:] == ["train", "evaluate_examples", "rank_examples"]


def test_the_scorer_answers_a_batch_on_the_device_with_one_read() -> None:
    """The serving scorer on ``meta`` (see above): the first read is the batch's answer."""
    weights = random_weights(300, SMALL)
    scorer = SessionScorer.from_weights(weights, SMALL, torch.device("meta"))
    ids = scorer.item_ids
    histories = [[ids[1], ids[2]], [ids[3]]]
    with pytest.raises(NotImplementedError, match="meta") as raised:
        scorer.top_k_batch(histories, 5, excluded=[np.array([4]), None])
    frame = [f for f in traceback.extract_tb(raised.tb) if "online_models" in f.filename][-1]
    assert frame.name == "top_k_batch" and "best.cpu()" in (frame.line or "")
