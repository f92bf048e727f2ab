"""Co-visitation: which items shoppers clicked next after each item, in recent sessions.

The evidence that makes session-kNN strong, kept as two row tensors of the head: for item
row ``i``, ``items[i]`` holds up to ``K`` successor rows (-1 = empty slot) and
``weights[i]`` their decayed counts. Every example adds pairs from the last ``window``
items of its history to its target, linearly weighted (with ``n`` = min(history length,
window): the latest click 1, the one before ``(n - 1) / n``, ..., ``1 / n``); a row's
existing counts decay by ``decay`` per unit of weight it receives, so each row follows its
own recent successors the way session-kNN samples the most recent sessions holding an item.
With ``reverse`` > 0 each pair also counts backwards (target -> history item). A row keeps the ``K``
largest counts: an old successor drops out once a fresher one outweighs it.

A session's evidence for a candidate is the position-weighted sum (V-SKNN's linear
weights over the session's clicks, the latest 1) of ``log1p`` of the candidate's counts in
the rows of the session's items; ranking adds ``blend * evidence`` to the head's score
(``SessionRecommender.add_covisitation``). Everything here is vectorised: no per-example
or per-item Python, and a session's evidence is a scatter-add of its history rows' ``K``
neighbours, never a catalogue-sized pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from online_models.model.device import selects_freely, to_device
from streamrec.settings import ModelSettings

WINDOW = 5  # defaults: ModelSettings.covis_window / covis_decay (a unit test holds them equal)
DECAY = 0.98
REVERSE = 1.0


@dataclass(frozen=True, slots=True)
class CovisitationRule:
    """How examples update the table: the history items paired with each target (0: none,
    the table stays as it is), and the decay per unit of weight a row receives."""

    window: int = WINDOW
    decay: float = DECAY
    reverse: float = REVERSE

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> CovisitationRule:
        return cls(settings.covis_window, settings.covis_decay, settings.covis_reverse)


@dataclass(frozen=True, slots=True)
class Evidence:
    """A batch's co-visitation evidence, sparse: ``values[j]`` at (``lines[j]``,
    ``columns[j]``). A pair may repeat (its values add up) and an entry of value 0 adds
    nothing (fixed shapes keep such entries; column -1 names no item)."""

    lines: torch.Tensor
    columns: torch.Tensor
    values: torch.Tensor


def position_weights(mask: torch.Tensor, window: int) -> torch.Tensor:
    """B x W linear weights of the last ``window`` history positions (latest 1), else 0.

    ``mask`` is left-padded: the last column is the latest click.
    """
    width = mask.shape[1]
    from_end = torch.arange(width - 1, -1, -1, device=mask.device, dtype=torch.float32)
    counted = mask.sum(dim=1, keepdim=True).clamp(max=window, min=1).float()
    return ((counted - from_end) / counted).clamp(min=0) * (mask > 0)


def session_evidence(
    items: torch.Tensor,
    weights: torch.Tensor,
    rows: torch.Tensor,
    mask: torch.Tensor,
    window: int,
    n_items: int,
) -> Evidence:
    """Per session (line of ``rows``/``mask``), each history position's neighbours with
    ``position weight * log1p(count)``; a (line, column) pair may repeat (sum them).

    No entry is dropped for its value (empty slots give 0 at column 0, adding nothing
    wherever values are summed), so no size depends on the table. On CPU the positions
    that count are picked first (free on the host, and most positions are padding); on a
    GPU every position is kept, padding adding 0, since picking them would make the host
    wait for the device.
    """
    position = position_weights(mask, window)  # B x W
    if selects_freely(rows.device):
        line, column = (position > 0).nonzero(as_tuple=True)
    else:
        line, column = (axis.flatten() for axis in torch.meshgrid(
            torch.arange(rows.shape[0], device=rows.device),
            torch.arange(rows.shape[1], device=rows.device), indexing="ij"))  # fmt: skip
    sources = rows[line, column].clamp(min=0)
    neighbours = items[sources].long()  # P x K
    values = torch.log1p(weights[sources]) * position[line, column, None]
    valid = (neighbours >= 0) & (neighbours < n_items) & (values != 0)
    return Evidence(
        line[:, None].expand_as(neighbours).flatten(),
        torch.where(valid, neighbours, 0).flatten(),
        torch.where(valid, values, 0.0).flatten(),
    )


def successor_pairs(
    rows: np.ndarray, mask: np.ndarray, targets: np.ndarray, window: int, reverse: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source row, target row, weight) for the last ``window`` history items of each
    example (left-padded ``rows``/``mask``), linearly weighted; an item is never its own
    successor and unknown targets (-1) give no pair. With ``reverse`` > 0 every pair also
    counts the other way, at ``reverse`` times its weight (the items clicked before an
    item are evidence too, as session-kNN counts any co-occurrence)."""
    if window == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    position = position_weights(torch.from_numpy(mask), window).numpy()
    keep = (position > 0) & (rows != targets[:, None]) & (targets[:, None] >= 0)
    line, column = np.nonzero(keep)
    sources, successors = rows[line, column], targets[line]
    amounts = position[line, column].astype(np.float32)
    if reverse <= 0:
        return sources, successors, amounts
    return (
        np.concatenate([sources, successors]),
        np.concatenate([successors, sources]),
        np.concatenate([amounts, amounts * np.float32(reverse)]),
    )


def update_covisitation(
    items: torch.Tensor,
    weights: torch.Tensor,
    sources: np.ndarray,
    targets: np.ndarray,
    amounts: np.ndarray,
    decay: float,
) -> torch.Tensor:
    """Add the pairs to the table in place; returns the rows that changed (sorted).

    Each changed row's counts first decay by ``decay ** (weight it receives)``, then the
    pairs' weights are added to their targets' counts (a target not in the row competes
    for a slot with its new count); the row keeps its ``K`` largest counts, heaviest first.

    The pairs come from the host (``successor_pairs``), so everything whose size depends
    on them (repeated pairs summed, pairs grouped by row) is worked out there; the device
    gets arrays of known sizes and never has to report one back.
    """
    device = items.device
    if len(sources) == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    span = max(int(items.shape[0]), 1)
    pairs, at = np.unique(sources.astype(np.int64) * span + targets, return_inverse=True)
    summed = np.bincount(at, weights=amounts, minlength=len(pairs)).astype(np.float32)
    # pairs sorted by source: each row's pairs are consecutive
    rows, first, counts = np.unique(pairs // span, return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(rows)), counts)
    place = np.arange(len(pairs)) - first[group]  # a pair's place among its row's pairs
    factors = np.power(decay, np.bincount(group, weights=summed)).astype(np.float32)
    changed, line, place_at, successors, added, factor = (
        to_device(values, device) for values in (rows, group, place, pairs % span, summed, factors)
    )
    kept_items = items[changed].long()
    kept = weights[changed] * factor[:, None]
    same = kept_items[line] == successors[:, None]  # a pair whose target the row already holds
    hit = same.any(dim=1)
    slot = same.int().argmax(dim=1)
    kept.index_put_((line, slot), torch.where(hit, added, 0.0), accumulate=True)
    # the other pairs are newcomers: the j-th pair of a row goes to column K + j (a held
    # target leaves its column empty)
    neighbours = items.shape[1]
    extra = int(counts.max())
    all_items = torch.cat([kept_items, kept_items.new_full((len(rows), extra), -1)], dim=1)
    all_weights = torch.cat([kept, kept.new_zeros((len(rows), extra))], dim=1)
    all_items[line, neighbours + place_at] = torch.where(hit, -1, successors)
    all_weights[line, neighbours + place_at] = torch.where(hit, 0.0, added)
    all_weights = torch.where(all_items >= 0, all_weights, torch.full_like(all_weights, -1.0))
    top = torch.topk(all_weights, neighbours, dim=1)  # empty slots (-1) sort last
    best_items = all_items.gather(1, top.indices)
    items[changed] = torch.where(top.values >= 0, best_items, -1).to(items.dtype)
    weights[changed] = top.values.clamp(min=0).to(weights.dtype)
    return changed
