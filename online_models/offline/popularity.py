"""Baseline: recent popularity (exponentially decayed counts in event time).

Counts are stored multiplied by ``exp(ts / half_life)`` instead of being decayed, which
ranks items exactly as decayed counts would (a common factor does not change an order)
and makes every update O(1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from online_models.model.item_index import ItemIndex
from online_models.model.ranking_metrics import MISS_RANK
from streamrec.training_examples import TrainingExample


class RecentPopularity:
    """Scores every item by its decayed count of example targets."""

    name = "popularity"

    def __init__(self, half_life_s: float = 86400.0) -> None:
        self.rate = math.log(2) / (half_life_s * 1000.0)
        self.index = ItemIndex()
        self.counts = np.zeros(1024, dtype=np.float64)
        self.origin_ms: int | None = None

    def learn(self, examples: Sequence[TrainingExample]) -> None:
        for example in examples:
            if self.origin_ms is None:
                self.origin_ms = example.ts
            row = self.index.add(example.target_item)
            if row >= self.counts.shape[0]:
                self.counts = np.concatenate([self.counts, np.zeros_like(self.counts)])
            exponent = (example.ts - self.origin_ms) * self.rate
            if exponent > 500:  # rebase before float64 overflows
                self.counts *= math.exp(-exponent)
                self.origin_ms, exponent = example.ts, 0.0
            self.counts[row] += example.weight * math.exp(exponent)

    def rank(self, examples: Sequence[TrainingExample]) -> np.ndarray:
        """Target ranks (the same for every session: popularity ignores history)."""
        scores = self.counts[: len(self.index)]
        ranks = np.empty(len(examples), dtype=np.int64)
        for i, example in enumerate(examples):
            row = self.index.row(example.target_item)
            ranks[i] = int((scores >= scores[row]).sum()) - 1 if row >= 0 else MISS_RANK
        return ranks
