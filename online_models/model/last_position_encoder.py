"""Run the BERT backbone for the one output the head reads: the last position's state.

The recommender scores a session from the encoder's state at its last position. In the
last layer, every other position's query, attention output and feed-forward is computed
and thrown away; that is most of the layer. Here the earlier layers run as the Hugging Face
modules do, and the last layer's own sub-modules (the same weights, the same dropout) run
for the last position only, with keys and values still taken from every position. The
result equals ``backbone(...).last_hidden_state[:, -1]`` (tests hold it to float32
rounding, forward and gradients); a forward and backward pass of the default model takes
about a third less time, which is the online learner's main cost.
"""

from __future__ import annotations

import torch
from transformers import BertModel


def last_position_state(
    backbone: BertModel, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """The encoder's state at the last position (B x H) for item vectors, mask, positions."""
    hidden = backbone.embeddings(inputs_embeds=embeds, position_ids=positions)
    blocked = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
    *earlier, last = backbone.encoder.layer
    for layer in earlier:
        output = layer(hidden, attention_mask=blocked)
        hidden = output[0] if isinstance(output, tuple) else output
    attention = last.attention.self
    batch, length, size = hidden.shape
    heads, width = attention.num_attention_heads, attention.attention_head_size
    # One query per session: its attention is a weighted sum over positions, computed
    # elementwise (a batched matmul would copy the transposed keys and values, forward
    # and backward, for a product with one row).
    query = attention.query(hidden[:, -1:]).view(batch, 1, heads, width)
    key = attention.key(hidden).view(batch, length, heads, width)
    value = attention.value(hidden).view(batch, length, heads, width)
    logits = (query * key).sum(dim=3) * attention.scaling + blocked[:, 0, 0, :, None]
    weights = attention.dropout(torch.softmax(logits, dim=1))  # B x positions x heads
    context = (weights[..., None] * value).sum(dim=1).reshape(batch, 1, size)
    attended = last.attention.output(context, hidden[:, -1:])
    return last.output(last.intermediate(attended), attended)[:, 0]


class LastPositionEncoder(torch.nn.Module):
    """``last_position_state`` as a module of its backbone: a plain function of tensors,
    for tracing (``traced_backbone``) and ``functional_call`` (``compiled_backbone``)."""

    def __init__(self, backbone: BertModel) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(
        self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        return last_position_state(self.backbone, embeds, mask, positions)
