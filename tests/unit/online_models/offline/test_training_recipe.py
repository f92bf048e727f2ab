"""The training recipe follows the model's size: rate by width, schedule, init by depth."""

from __future__ import annotations

import math
import random

import pytest

from online_models.model.recommender import SessionRecommender
from online_models.model.weights import ModelShape
from online_models.offline.training import lr_factor, peak_lr, scale_residual_outputs, train
from streamrec.settings import ModelSettings, TrainSettings, train_recipe
from streamrec.training_examples import TrainingExample


def test_the_rate_falls_with_the_square_root_of_the_width() -> None:
    settings = TrainSettings(lr=4e-3, lr_reference_width=64)
    assert peak_lr(settings, 64) == pytest.approx(4e-3)
    assert peak_lr(settings, 256) == pytest.approx(2e-3)


def test_the_schedule_warms_up_linearly_then_decays_to_the_final_fraction() -> None:
    factor = lr_factor(TrainSettings(warmup_fraction=0.1, final_lr_fraction=0.2), 100)
    ramp = [factor(step) for step in range(10)]
    assert ramp == pytest.approx([(step + 1) / 10 for step in range(10)])
    decay = [factor(step) for step in range(10, 101)]
    assert decay[0] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert decay[-1] == pytest.approx(0.2)
    constant = lr_factor(TrainSettings(warmup_fraction=0.0, final_lr_fraction=1.0), 50)
    assert {constant(step) for step in range(50)} == {1.0}


def test_a_preset_brings_its_batch_size_unless_one_is_set_explicitly() -> None:
    large = ModelSettings(preset="large")
    assert train_recipe(large, TrainSettings()).batch_size == 256
    assert train_recipe(large, TrainSettings(batch_size=64)).batch_size == 64
    assert train_recipe(ModelSettings(), TrainSettings()).batch_size == 128
    assert large.dropout == 0.2 and ModelSettings(preset="xl").dropout == 0.3
    assert ModelSettings(preset="xl", dropout=0.1).dropout == 0.1


def test_deeper_encoders_start_with_smaller_residual_outputs() -> None:
    def output_scale(layers: int) -> float:
        model = SessionRecommender(ModelShape(32, layers, 2, 5), capacity=16, seed=3)
        before = model.backbone.encoder.layer[0].output.dense.weight.detach().clone()
        scale_residual_outputs(model)
        after = model.backbone.encoder.layer[0].output.dense.weight
        return float(after.detach().norm() / before.norm())

    assert output_scale(1) == pytest.approx(1 / math.sqrt(2), rel=1e-5)
    assert output_scale(4) == pytest.approx(1 / math.sqrt(8), rel=1e-5)


def test_training_follows_the_schedule_across_epochs() -> None:
    rng = random.Random(0)
    examples = [
        TrainingExample(
            f"e{i}", f"s{i % 30}", (f"i{rng.randrange(20)}",), f"i{rng.randrange(20)}", i
        )
        for i in range(400)
    ]
    model = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=4)
    settings = TrainSettings(epochs=4, batch_size=32, patience=10, lr=1e-2, lr_reference_width=16)
    result = train(model, settings, examples)
    rates = [record["lr"] for record in result.history]
    assert len(rates) == 4
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert rates[-1] == pytest.approx(1e-2 * settings.final_lr_fraction)
