"""HR@K and MRR@K from full score matrices (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

CUTOFF = 20
MISS_RANK = 1 << 30  # the rank of a target the model cannot recommend (unknown item)


@dataclass(slots=True)
class RankingTotals:
    """Sums over examples, so batches combine by addition."""

    examples: int = 0
    hits: int = 0
    reciprocal_rank_sum: float = 0.0

    def add(self, other: RankingTotals) -> None:
        self.examples += other.examples
        self.hits += other.hits
        self.reciprocal_rank_sum += other.reciprocal_rank_sum

    @property
    def hit_rate(self) -> float:
        return self.hits / self.examples if self.examples else 0.0

    @property
    def mrr(self) -> float:
        return self.reciprocal_rank_sum / self.examples if self.examples else 0.0


def target_ranks(
    scores: torch.Tensor, target_rows: torch.Tensor, cutoff: int = CUTOFF
) -> torch.Tensor:
    """0-based rank of each target when it is within ``cutoff``, else ``MISS_RANK``.

    The rank is the number of other items scoring at least as high: ties count against
    the target, so a constant model never looks good; targets the model does not know
    (row -1) are misses. One comparison pass, which on CPU costs less than a top-k.
    ``scores`` (float32) is overwritten: callers pass a matrix they own. Counts stay
    exact in float32 up to 2**24 items.
    """
    if scores.shape[1] == 0:
        return torch.full_like(target_rows, MISS_RANK)
    known = target_rows >= 0
    target_scores = scores.gather(1, target_rows.clamp(min=0).unsqueeze(1))
    # In place (1.0 where at least the target's score): a bool matrix and its sum would
    # cost two more passes over the largest tensor of the step.
    ranks = scores.ge_(target_scores).sum(dim=1).long() - 1
    inside = known & (ranks < cutoff)
    return torch.where(inside, ranks, torch.full_like(ranks, MISS_RANK))


def ranking_totals(ranks: torch.Tensor, cutoff: int = CUTOFF) -> RankingTotals:
    """Hits and reciprocal-rank sum at ``cutoff`` for a batch of ranks."""
    hit = ranks < cutoff
    reciprocal = torch.where(hit, 1.0 / (ranks.double() + 1.0), torch.zeros_like(ranks.double()))
    return RankingTotals(int(ranks.shape[0]), int(hit.sum()), float(reciprocal.sum()))
