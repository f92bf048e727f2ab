"""The learner's compiled encoder: the eager code's numbers, one compile for every learner
of a shape, and the eager code when compiling fails."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from online_models.learner.micro_batch import HeadLearner
from online_models.model import compiled_backbone
from online_models.model.compiled_backbone import CompiledBackbone, backbone_runner, compiles
from online_models.model.last_position_encoder import last_position_state
from online_models.model.recommender import random_weights
from streamrec.settings import LearnerSettings, ModelSettings
from tests.unit.online_models.learner.test_micro_batch import chain_examples
from tests.unit.online_models.model.test_last_position_encoder import backbone, inputs

CPU = torch.device("cpu")
SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=6, initial_items=16)


def state_and_gradient(call: object, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    embeds, mask, positions = inputs(length)
    leaf = embeds.clone().requires_grad_(True)
    state = call(leaf, mask, positions)  # type: ignore[operator]
    weights = torch.randn(state.shape, generator=torch.Generator().manual_seed(length))
    (state * weights).sum().backward()
    assert leaf.grad is not None
    return state.detach(), leaf.grad


@pytest.mark.skipif(not compiles("auto", CPU), reason="no C++ compiler for inductor")
def test_the_compiled_pass_gives_the_eager_state_and_gradients_for_any_batch_shape() -> None:
    model = backbone(2).requires_grad_(False)
    compiled = CompiledBackbone(model)
    for length in (7, 3, 12):  # dynamic shapes: one compile, then other widths
        expected = state_and_gradient(lambda *a: last_position_state(model, *a), length)
        got = state_and_gradient(compiled, length)
        torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=1e-5)
    assert not compiled.failed


@pytest.mark.skipif(not compiles("auto", CPU), reason="no C++ compiler for inductor")
def test_a_compiled_learner_ranks_and_learns_as_the_eager_one() -> None:
    examples = chain_examples(640, items=60)
    learners = {
        setting: HeadLearner.from_weights(
            random_weights(0, SMALL),
            LearnerSettings(batch_size=64, sampled_negatives=16, compile=setting),
            CPU,
        )
        for setting in ("on", "off")
    }
    assert learners["on"].encoder_compiled and not learners["off"].encoder_compiled
    for start in range(0, len(examples), 64):
        batch = examples[start : start + 64]
        on, off = (learners[s].learn(batch) for s in ("on", "off"))
        assert on.skipped == off.skipped == ""
        # float rounding of fused kernels: near-ties may swap, losses agree closely
        assert np.mean(on.ranks != off.ranks) <= 0.02
        assert on.loss == pytest.approx(off.loss, rel=1e-4, abs=1e-5)
    rows = {s: learners[s].model.item_table.detach() for s in ("on", "off")}
    torch.testing.assert_close(rows["on"], rows["off"], atol=1e-4, rtol=1e-4)
    assert not learners["on"].model.backbone_call.failed  # type: ignore[union-attr]


def test_a_failed_compile_is_logged_once_and_the_eager_code_runs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def broken(*_: object) -> torch.Tensor:
        calls.append(1)
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(compiled_backbone, "_compiled", broken)
    model = backbone(1).requires_grad_(False)
    compiled = CompiledBackbone(model)
    with caplog.at_level(logging.WARNING, logger=compiled_backbone.__name__):
        for length in (4, 5):
            expected = state_and_gradient(lambda *a: last_position_state(model, *a), length)
            got = state_and_gradient(compiled, length)
            torch.testing.assert_close(got[0], expected[0], atol=0, rtol=0)
            torch.testing.assert_close(got[1], expected[1], atol=0, rtol=0)
    assert compiled.failed and len(calls) == 1, "tried once, then eager for good"
    failures = [r for r in caplog.records if r.getMessage() == "backbone_compile_failed"]
    assert len(failures) == 1 and "no C++ compiler" in str(failures[0].__dict__)


def test_auto_compiles_on_cpu_when_a_compiler_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled_backbone.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert compiles("auto", CPU) and compiles("on", CPU) and not compiles("off", CPU)
    assert not compiles("auto", torch.device("cuda")), "a GPU runs eagerly until measured"
    assert compiles("on", torch.device("cuda"))
    monkeypatch.setattr(compiled_backbone.shutil, "which", lambda name: None)
    assert not compiles("auto", CPU)
    assert not isinstance(backbone_runner(backbone(1), "auto", CPU), CompiledBackbone)


@pytest.mark.skipif(not compiles("auto", CPU), reason="no C++ compiler for inductor")
def test_a_second_backbone_of_the_same_shape_reuses_the_compiled_code() -> None:
    from torch._dynamo.utils import counters

    first, second = backbone(1).requires_grad_(False), backbone(1).requires_grad_(False)
    with torch.no_grad():
        second.embeddings.LayerNorm.weight.mul_(2.0)  # other weights, same shapes
    state_and_gradient(CompiledBackbone(first), 6)
    graphs = counters["stats"]["unique_graphs"]
    got = state_and_gradient(CompiledBackbone(second), 6)
    assert counters["stats"]["unique_graphs"] == graphs, "compiled again"
    expected = state_and_gradient(lambda *a: last_position_state(second, *a), 6)
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)


def test_a_learner_whose_compile_fails_learns_eagerly_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_: object) -> torch.Tensor:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(compiled_backbone, "_compiled", broken)
    settings = LearnerSettings(batch_size=32, sampled_negatives=8, compile="on")
    learner = HeadLearner.from_weights(random_weights(0, SMALL), settings, CPU)
    call = learner.model.backbone_call
    assert isinstance(call, CompiledBackbone) and call.failed, "the warm-up met the failure"
    assert not learner.encoder_compiled
    eager = HeadLearner.from_weights(
        random_weights(0, SMALL), LearnerSettings(batch_size=32, sampled_negatives=8), CPU
    )
    batch = chain_examples(32)
    assert learner.learn(batch).loss == eager.learn(batch).loss


@pytest.mark.skipif(not compiles("auto", CPU), reason="no C++ compiler for inductor")
def test_after_the_warm_up_no_batch_compiles_again() -> None:
    """One session, as many sessions as clicks, a sliced mask, expanded positions: the
    shapes and layouts a learner's batches come in all run the warm-up's graph."""
    from torch._dynamo.utils import counters

    model = backbone(2).requires_grad_(False)
    compiled = CompiledBackbone(model)
    compiled.warm_up(CPU)
    graphs = counters["stats"]["unique_graphs"]
    for sessions, length in ((1, 7), (7, 7), (5, 12), (2, 3)):
        embeds, mask, positions = inputs(length)
        embeds = torch.cat([embeds] * 2)[:sessions]
        mask = torch.cat([mask] * 2)
        mask = torch.cat([mask] * 2, dim=1)[:sessions, length:]  # a strided slice
        positions = positions[:1].expand(sessions, length)
        leaf = embeds.clone().requires_grad_(True)
        reference = embeds.clone().requires_grad_(True)
        got = compiled(leaf, mask, positions)
        expected = last_position_state(model, reference, mask, positions)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        got.sum().backward()
        expected.sum().backward()
        torch.testing.assert_close(leaf.grad, reference.grad, atol=1e-5, rtol=1e-5)
    assert counters["stats"]["unique_graphs"] == graphs, "a batch compiled again"
    assert not compiled.failed
