"""Baseline: session-based kNN in the V-SKNN style (Ludewig & Jannach, 2018).

For the current session, candidate neighbours are the ``sample_size`` most recent past
sessions that contain each of its items. A neighbour's similarity is the sum, over the
items the two sessions share, of the item's position weight in the current session
(linear: the latest click weighs 1, the first 1/L), optionally divided by the square root
of the neighbour's length. The ``k`` most similar neighbours vote for their items with
their similarity. The base grows online: every example adds its items to its session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

from online_models.model.item_index import ItemIndex
from online_models.model.ranking_metrics import MISS_RANK
from streamrec.training_examples import TrainingExample


@dataclass(frozen=True, slots=True)
class KnnConfig:
    k: int = 100
    sample_size: int = 500
    normalize: bool = True


class SessionKnn:
    """Online session-kNN over string item ids."""

    name = "session_knn"

    def __init__(self, config: KnnConfig = KnnConfig()) -> None:
        self.config = config
        self.index = ItemIndex()
        self.item_sessions: list[list[int]] = []
        self.session_items: list[list[int]] = []
        self.session_sets: list[set[int]] = []
        self.session_of: dict[str, int] = {}

    def learn(self, examples: Sequence[TrainingExample]) -> None:
        for example in examples:
            session = self.session_of.get(example.session_id)
            if session is None:
                session = self.session_of[example.session_id] = len(self.session_items)
                self.session_items.append([])
                self.session_sets.append(set())
            items, members = self.session_items[session], self.session_sets[session]
            for item in (*example.history, example.target_item):
                row = self.index.add(item)
                if row == len(self.item_sessions):
                    self.item_sessions.append([])
                if row not in members:
                    members.add(row)
                    items.append(row)
                    self.item_sessions[row].append(session)

    def rank(self, examples: Sequence[TrainingExample]) -> np.ndarray:
        ranks = np.empty(len(examples), dtype=np.int64)
        for i, example in enumerate(examples):
            ranks[i] = self._rank_one(example)
        return ranks

    def _rank_one(self, example: TrainingExample) -> int:
        target = self.index.row(example.target_item)
        if target < 0:
            return MISS_RANK
        scores = self._scores(example)
        return int((scores >= scores[target]).sum()) - 1

    def _scores(self, example: TrainingExample) -> np.ndarray:
        config = self.config
        n_items = len(self.index)
        history = [r for r in (self.index.row(i) for i in example.history) if r >= 0]
        if not history:
            return np.zeros(n_items)
        weight_of: dict[int, float] = {}
        for position, row in enumerate(history, 1):
            weight_of[row] = position / len(history)  # later clicks overwrite: latest wins
        rows = list(weight_of)
        samples = [self.item_sessions[r][-config.sample_size :] for r in rows]
        candidates = np.fromiter(chain.from_iterable(samples), dtype=np.int64)
        if candidates.size == 0:
            return np.zeros(n_items)
        weights = np.repeat([weight_of[r] for r in rows], [len(s) for s in samples])
        sessions, inverse = np.unique(candidates, return_inverse=True)
        similarity = np.bincount(inverse, weights=weights)
        own = self.session_of.get(example.session_id, -1)
        similarity[sessions == own] = 0.0
        if config.normalize:
            lengths = np.fromiter((len(self.session_items[s]) for s in sessions), dtype=np.float64)
            similarity /= np.sqrt(lengths)
        if sessions.size > config.k:
            keep = np.argpartition(-similarity, config.k)[: config.k]
            sessions, similarity = sessions[keep], similarity[keep]
        neighbour_items = [self.session_items[s] for s in sessions.tolist()]
        items = np.fromiter(chain.from_iterable(neighbour_items), dtype=np.int64)
        votes = np.repeat(similarity, [len(x) for x in neighbour_items])
        return np.bincount(items, weights=votes, minlength=n_items)
