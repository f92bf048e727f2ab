"""The co-visitation table and its blend from recorded examples: what full training adds.

``learn_successors`` fills the table from examples in event-time order, in the online
learner's micro-batches and with the same update (``update_covisitation``), so a trained
model starts with the table the learner would have built. ``fit_blend`` picks the blend
the online learner starts from: the grid value with the best HR@20 on the given (later)
examples, with everything else frozen; the learner keeps adjusting it by gradient.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from online_models.model.covisitation import (
    CovisitationRule,
    successor_pairs,
    update_covisitation,
)
from online_models.model.device import to_device
from online_models.model.item_index import ItemIndex
from online_models.model.prequential_ranks import exact_ranks
from online_models.model.ranking_metrics import CUTOFF
from online_models.model.recommender import SessionRecommender, history_tensors
from online_models.model.weights import ModelWeights
from streamrec.training_examples import TrainingExample

BLEND_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
CHUNK = 256  # the learner's micro-batch: decay sees the same steps as online
FIT_CHUNK = 1024


def learn_successors(
    model: SessionRecommender,
    index: ItemIndex,
    examples: Sequence[TrainingExample],
    rule: CovisitationRule,
) -> None:
    """Add every example's (last history items -> target) pairs, oldest first; examples
    whose items the index does not know add only their known pairs."""
    for sources, successors, amounts in _pairs_by_chunk(model, index, examples, rule):
        update_covisitation(
            model.covis_items, model.covis_weight, sources, successors, amounts, rule.decay
        )


def relearn_successors(
    model: SessionRecommender,
    index: ItemIndex,
    examples: Sequence[TrainingExample],
    rule: CovisitationRule,
    keep: float,
) -> int:
    """Every row ``examples`` add pairs to keeps ``keep`` of its counts (0: forgets them),
    then learns ``examples`` again (``learn_successors``): after a change the table follows
    what came after each item since, where the learner's decay would take each row dozens
    of visits to forget what came before. Rows the examples never reach stay as they are.
    Returns how many rows were re-learned."""
    chunks = list(_pairs_by_chunk(model, index, examples, rule))
    if not chunks:
        return 0
    rows = np.unique(np.concatenate([sources for sources, _, _ in chunks]))
    at = to_device(rows, model.covis_items.device)
    if keep > 0:
        model.covis_weight[at] *= keep
    else:
        model.covis_items[at] = -1
        model.covis_weight[at] = 0.0
    for sources, successors, amounts in chunks:
        update_covisitation(
            model.covis_items, model.covis_weight, sources, successors, amounts, rule.decay
        )
    return len(rows)


def _pairs_by_chunk(
    model: SessionRecommender,
    index: ItemIndex,
    examples: Sequence[TrainingExample],
    rule: CovisitationRule,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The examples' (source, successor, amount) pairs, oldest first, a micro-batch at a time."""
    ordered = sorted(examples, key=lambda example: example.ts)
    for start in range(0, len(ordered), CHUNK):
        chunk = ordered[start : start + CHUNK]
        rows, mask = index.encode_histories([e.history for e in chunk], model.shape.max_seq_len)
        targets = index.rows_of([e.target_item for e in chunk])
        yield successor_pairs(rows, mask, targets, rule.window, rule.reverse)


def with_successors(
    weights: ModelWeights, examples: Sequence[TrainingExample], rule: CovisitationRule
) -> ModelWeights:
    """``weights`` whose table has also learned ``examples`` (``learn_successors``)."""
    model = SessionRecommender.from_weights(weights)
    learn_successors(model, ItemIndex(weights.item_ids), examples, rule)
    return model.to_weights(weights.version, weights.item_ids)


def fit_blend(
    model: SessionRecommender,
    index: ItemIndex,
    examples: Sequence[TrainingExample],
    grid: Sequence[float] = BLEND_GRID,
) -> dict[float, float]:
    """Set ``model``'s blend to the grid value with the best HR@20 on ``examples`` (ties:
    the smaller blend); returns HR@20 by blend. Nothing else changes."""
    if not examples:
        return {}
    device = model.item_table.device
    hits = np.zeros(len(grid))
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), FIT_CHUNK):
            chunk = examples[start : start + FIT_CHUNK]
            rows, mask = index.encode_histories([e.history for e in chunk], model.shape.max_seq_len)
            batch = history_tensors(rows, mask, device)
            sessions = model.session_vectors(batch)
            target_rows = index.rows_of([e.target_item for e in chunk])
            targets = to_device(target_rows, device)
            known = to_device(np.flatnonzero(target_rows >= 0), device)
            for at, blend in enumerate(grid):
                model.covis_blend.fill_(blend)
                ranks = exact_ranks(model, sessions, batch.rows, batch.mask, targets, known)
                hits[at] += int((ranks < CUTOFF).sum())
        best = int(np.argmax(hits))
        model.covis_blend.fill_(grid[best])
    return {blend: float(h) / len(examples) for blend, h in zip(grid, hits, strict=True)}
