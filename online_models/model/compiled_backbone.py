"""The online learner's encoder pass compiled by ``torch.compile`` (inductor), for CPU.

A learner batch runs the frozen backbone forward and backward twice (``steps_per_batch``),
and in eager mode that is a few dozen small kernels each way, every one a pass over the
batch's activations. Inductor fuses them (the embeddings' sum and layer norm, attention's
elementwise steps, GELU and its gradient) into a few C++ loops: on a 2-core AVX-512 host
`streamrec bench learner --step-only` gave about 10-17% more examples/s with the default
model (docs/model.md, Benchmark, session 13).

One compiled function serves every model: the backbone's parameters are an argument
(``torch.func.functional_call``), not something the graph closes over, so a new learner
(a reloaded snapshot, an evaluation's next trial) with the same shapes reuses the code
instead of compiling again. Shapes are dynamic (batch size and history bucket vary by
batch).

Compiling needs a C++ compiler at run time. ``backbone_runner`` decides from the
learner's ``compile`` setting (``auto``: on CPU, when a compiler is on the ``PATH``); if
the compiled call ever fails, the failure is logged once and the eager code (the
reference, ``last_position_state``) runs from then on, so a host without a working
toolchain learns as before, only slower.
"""

from __future__ import annotations

import logging
import os
import shutil
from functools import partial
from typing import Any

import torch
from transformers import BertModel

from online_models.model.last_position_encoder import LastPositionEncoder, last_position_state
from online_models.model.recommender import BackboneCall
from streamrec.structured_log import log_event

logger = logging.getLogger(__name__)


@torch.compile(dynamic=True)
def _compiled(
    module: LastPositionEncoder, tensors: dict[str, torch.Tensor], *args: torch.Tensor
) -> torch.Tensor:
    return torch.func.functional_call(module, tensors, args)


class CompiledBackbone:
    """A ``BackboneCall`` that runs the compiled encoder, or the eager one after a failure."""

    def __init__(self, backbone: BertModel) -> None:
        self.module = LastPositionEncoder(backbone)
        self.tensors: dict[str, Any] = {
            **dict(self.module.named_parameters()),
            **dict(self.module.named_buffers()),
        }
        self.failed = False

    def __call__(
        self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        if not self.failed:
            try:
                return self._compiled_call(embeds, mask, positions)
            except Exception as error:  # noqa: BLE001 - any compile failure: run eagerly
                self.failed = True
                message = f"{type(error).__name__}: {error}"[:500]
                log_event(logger, "backbone_compile_failed", logging.WARNING, error=message)
        return self.module(embeds, mask, positions)  # the eager reference

    def _compiled_call(
        self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """The compiled graph, fed so that one graph serves every batch: contiguous
        inputs (a guard on strides would compile again for a sliced mask or expanded
        positions) and at least two sessions (a size of 1 is specialised: one session is
        run twice and the first answer kept; its gradient is the same)."""
        single = embeds.shape[0] == 1
        if single:
            embeds, mask, positions = (t.expand(2, *t.shape[1:]) for t in (embeds, mask, positions))
        args = (t.contiguous() for t in (embeds, mask, positions))
        state = _compiled(self.module, self.tensors, *args)
        return state[:1] if single else state

    def warm_up(self, device: torch.device) -> None:
        """Compile now, with a forward and backward pass, so that the first batch of
        examples does not wait for it (seconds; a failure falls back here). Three
        sessions of two clicks: sizes that equal no other (dynamo assumes equal sizes seen
        while compiling stay equal, and would compile again when they differ)."""
        config = self.module.backbone.config
        batch, width, top = 3, 2, config.max_position_embeddings
        embeds = torch.zeros(batch, width, config.hidden_size, device=device, requires_grad=True)
        mask = torch.ones(batch, width, dtype=torch.long, device=device)
        positions = torch.arange(top - width, top, device=device).expand(batch, width)
        self(embeds, mask, positions).sum().backward()


def compiles(setting: str, device: torch.device) -> bool:
    """Whether the learner's encoder is compiled: ``on``, ``off``, or ``auto`` (on CPU,
    when a C++ compiler is found; on a GPU the eager code, until measured there)."""
    if setting == "auto":
        compiler = os.environ.get("CXX") or "c++"
        return device.type == "cpu" and shutil.which(compiler) is not None
    return setting == "on"


def backbone_runner(backbone: BertModel, setting: str, device: torch.device) -> BackboneCall:
    """What runs the backbone in the learner: compiled (see ``compiles``, compiled here
    and now) or eager."""
    if compiles(setting, device):
        compiled = CompiledBackbone(backbone)
        compiled.warm_up(device)
        return compiled
    return partial(last_position_state, backbone)
