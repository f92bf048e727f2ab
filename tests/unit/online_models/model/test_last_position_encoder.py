"""The last-position encoder equals the full Hugging Face forward where the head reads it."""

from __future__ import annotations

import pytest
import torch
from transformers import BertModel

from online_models.model.last_position_encoder import last_position_state
from online_models.model.recommender import backbone_config
from online_models.model.weights import ModelShape


def backbone(layers: int, dropout: float = 0.0) -> BertModel:
    torch.manual_seed(layers)
    shape = ModelShape(hidden_size=32, num_layers=layers, num_heads=4, max_seq_len=12)
    return BertModel(backbone_config(shape, dropout), add_pooling_layer=False).eval()


def inputs(length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Five sessions, left-padded to different lengths (one unpadded)."""
    generator = torch.Generator().manual_seed(length)
    embeds = torch.randn(5, length, 32, generator=generator)
    mask = torch.ones(5, length, dtype=torch.long)
    for row, pad in enumerate((0, 1, length // 2, length - 1, 2)):
        mask[row, :pad] = 0
    positions = torch.arange(12 - length, 12).expand(5, length)
    return embeds, mask, positions


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("length", [2, 7, 12])
def test_state_and_input_gradients_equal_the_full_forward(layers: int, length: int) -> None:
    model = backbone(layers)
    embeds, mask, positions = inputs(length)
    full_in = embeds.clone().requires_grad_(True)
    fast_in = embeds.clone().requires_grad_(True)
    full = model(inputs_embeds=full_in, attention_mask=mask, position_ids=positions)
    expected = full.last_hidden_state[:, -1]
    got = last_position_state(model, fast_in, mask, positions)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1))
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    assert full_in.grad is not None and fast_in.grad is not None
    torch.testing.assert_close(fast_in.grad, full_in.grad, atol=1e-5, rtol=1e-5)


def test_padding_does_not_leak_into_the_state() -> None:
    model = backbone(2)
    embeds, mask, positions = inputs(7)
    changed = embeds.clone()
    changed[2, : 7 // 2] = 100.0  # session 2's padded positions
    first = last_position_state(model, embeds, mask, positions)
    second = last_position_state(model, changed, mask, positions)
    torch.testing.assert_close(first[2], second[2])


def test_training_mode_applies_the_backbone_dropout() -> None:
    model = backbone(2, dropout=0.5).train()
    embeds, mask, positions = inputs(7)
    first = last_position_state(model, embeds, mask, positions)
    second = last_position_state(model, embeds, mask, positions)
    assert not torch.allclose(first, second)
    model.eval()
    torch.testing.assert_close(
        last_position_state(model, embeds, mask, positions),
        last_position_state(model, embeds, mask, positions),
    )
