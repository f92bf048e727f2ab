"""The head step as it was formulated before the host/device split: the test oracle.

Per-example Python, one encoder call per length bucket, a dense session mask, a top-k
rank. ``test_step_formulations`` runs a fixed stream through this and ``HeadLearner``
and holds ranks, losses and weights to each other. Not used by the project itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from online_models.learner.micro_batch import NEW_ROW_SCALE
from online_models.model.item_index import ItemIndex
from online_models.model.ranking_metrics import CUTOFF, MISS_RANK
from online_models.model.recommender import SessionRecommender, bucket_lengths
from streamrec.settings import LearnerSettings
from streamrec.training_examples import TrainingExample


class ReferenceHeadLearner:
    """``HeadLearner.learn`` as it was: returns (ranks, loss of the last step)."""

    def __init__(self, model: SessionRecommender, index: ItemIndex, settings: LearnerSettings):
        self.model, self.index, self.settings = model, index, settings
        model.backbone.eval().requires_grad_(False)
        self.dense = list(model.projection.parameters())
        self.optimizer = torch.optim.Adam(self.dense, lr=settings.lr)
        self.generator = torch.Generator().manual_seed(0)

    def learn(self, examples: Sequence[TrainingExample]) -> tuple[np.ndarray, float]:
        model, index = self.model, self.index
        known = torch.tensor([index.row(e.target_item) for e in examples])
        rows, mask = self._histories(examples)
        inputs, input_rows, sessions = self._forward(rows, mask)
        with torch.no_grad():
            scores = model.scores(sessions.detach(), rows, mask, lift=True)
            ranks = _topk_ranks(scores, known)
        grow = any(item not in index for e in examples for item in e.history)
        new_ids = index.add_all(
            item for e in examples for item in (*e.history, e.target_item) if item not in index
        )
        if new_ids:
            self._add_items(len(new_ids), examples, sessions.detach())
        targets = torch.tensor([index.row(e.target_item) for e in examples])
        weights = torch.tensor([e.weight for e in examples], dtype=torch.float32)
        loss = 0.0
        for number in range(self.settings.steps_per_batch):
            if number:
                if grow:
                    rows, mask = self._histories(examples)
                    grow = False
                inputs, input_rows, sessions = self._forward(rows, mask)
            loss = self._step(inputs, input_rows, sessions, rows, mask, targets, weights)
        return ranks.numpy(), loss

    def _histories(self, examples: Sequence[TrainingExample]) -> tuple[torch.Tensor, torch.Tensor]:
        width = self.model.shape.max_seq_len
        rows = np.zeros((len(examples), width), dtype=np.int64)
        mask = np.zeros_like(rows)
        for i, example in enumerate(examples):
            found = [self.index.row(item) for item in example.history if item in self.index]
            found = found[-width:]
            if found:
                rows[i, width - len(found) :] = found
                mask[i, width - len(found) :] = 1
        return torch.from_numpy(rows), torch.from_numpy(mask)

    def _forward(
        self, rows: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = torch.unique(rows[mask > 0])
        input_rows = self.model.item_table.detach()[inputs].clone().requires_grad_(True)
        columns = torch.searchsorted(inputs, rows).clamp(max=max(len(inputs) - 1, 0))
        return (
            inputs,
            input_rows,
            self.model.projection(_bucketed(self.model, columns, mask, input_rows)),
        )

    def _step(
        self,
        inputs: torch.Tensor,
        input_rows: torch.Tensor,
        sessions: torch.Tensor,
        rows: torch.Tensor,
        mask: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
    ) -> float:
        model = self.model
        n, negatives = model.n_items, self.settings.sampled_negatives
        sampled = torch.randint(0, n, (negatives,), generator=self.generator)
        candidates = torch.unique(torch.cat([targets, sampled]))
        labels = torch.searchsorted(candidates, targets)
        columns = torch.searchsorted(candidates, rows).clamp(max=len(candidates) - 1)
        present = (candidates[columns] == rows) & (mask > 0)
        spare = torch.full_like(columns, len(candidates))
        in_session = torch.zeros(len(rows), len(candidates) + 1, dtype=torch.bool).scatter_(
            1, torch.where(present, columns, spare), True
        )[:, :-1]
        explore = ~in_session.gather(1, labels[:, None]).squeeze(1)
        if not bool(explore.any()):
            return 0.0
        output_rows = model.item_table.detach()[candidates].clone().requires_grad_(True)
        bias_rows = model.item_bias.detach()[candidates].clone().requires_grad_(True)
        logits = torch.addmm(bias_rows, sessions[explore], output_rows.T)
        logits = logits.masked_fill(in_session[explore], float("-inf"))
        losses = torch.nn.functional.cross_entropy(logits, labels[explore], reduction="none")
        loss = (losses * weights[explore]).sum() / weights[explore].sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [*self.dense, output_rows, bias_rows, input_rows], self.settings.grad_clip
        )
        self.optimizer.step()
        with torch.no_grad():
            for tensor, index, leaf in (
                (model.item_table, candidates, output_rows),
                (model.item_bias, candidates, bias_rows),
                (model.item_table, inputs, input_rows),
            ):
                if leaf.grad is not None:
                    tensor.index_add_(0, index, leaf.grad, alpha=-self.settings.row_lr)
        return float(loss.detach())

    def _add_items(
        self, count: int, examples: Sequence[TrainingExample], sessions: torch.Tensor
    ) -> None:
        model = self.model
        start = model.n_items
        added = model.add_rows(count)
        position = {
            row: i
            for i, e in enumerate(examples)
            if (row := self.index.row(e.target_item)) >= start
        }
        if start == 0:
            return
        with torch.no_grad():
            model.item_bias[added.start : added.stop] = model.item_bias[:start].median()
            if position:
                norm = model.item_table[:start].norm(dim=1).median()
                chosen = sessions[torch.tensor(list(position.values()))]
                directions = torch.nn.functional.normalize(chosen, dim=1)
                model.item_table[torch.tensor(list(position))] = directions * norm * NEW_ROW_SCALE


def _bucketed(
    model: SessionRecommender, rows: torch.Tensor, mask: torch.Tensor, table: torch.Tensor
) -> torch.Tensor:
    """The encoder as it was: one backbone call per length bucket, padding cut off."""
    length = mask.sum(dim=1)
    full = rows.shape[1]
    out = torch.zeros(rows.shape[0], model.shape.hidden_size)
    low = 0
    for high in bucket_lengths(full):
        members = ((length > low) & (length <= high)).nonzero().flatten()
        low = high
        if members.numel() == 0:
            continue
        positions = torch.arange(full - high, full).expand(members.numel(), high)
        embeds = torch.nn.functional.embedding(rows[members, -high:], table)
        state = model.backbone_call(embeds, mask[members, -high:], positions)
        out = out.index_copy(0, members, state)
    return out


def _topk_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if scores.shape[1] == 0:
        return torch.full_like(targets, MISS_RANK)
    target_scores = scores.gather(1, targets.clamp(min=0).unsqueeze(1))
    top = torch.topk(scores, min(CUTOFF + 1, scores.shape[1]), dim=1, sorted=False).values
    at_or_above = (top >= target_scores).sum(dim=1)
    inside = (targets >= 0) & (at_or_above <= CUTOFF)
    return torch.where(inside, at_or_above - 1, torch.full_like(at_or_above, MISS_RANK))
