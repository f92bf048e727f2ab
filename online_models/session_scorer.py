"""Scoring a session against the whole catalog, for serving: inference only, no state.

Built once per model version (``SessionScorer.from_weights``); the item matrix is kept
as one contiguous float32 tensor and each call does one encoder pass plus one
matrix-vector product. The scorer is read-only after construction, so one instance can
be shared by threads and swapped atomically when a new version arrives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from online_models.item_index import ItemIndex
from online_models.model_weights import ModelWeights
from online_models.session_model import SessionRecommender
from streamrec.settings import ModelSettings

BF16_MIN_ITEMS = 262_144


class SessionScorer:
    """Scores over ``item_ids`` (index-aligned) for a session history of item ids."""

    def __init__(
        self, model: SessionRecommender, index: ItemIndex, version: int, table_dtype: str = "auto"
    ) -> None:
        self.version = version
        self.index = index
        self._model = model.eval().requires_grad_(False)
        n = model.n_items
        # Scoring a large catalog is memory-bound: bfloat16 halves the bytes read per call.
        use_bf16 = table_dtype == "bfloat16" or (table_dtype == "auto" and n >= BF16_MIN_ITEMS)
        dtype = torch.bfloat16 if use_bf16 else torch.float32
        self._table = model.item_table.detach()[:n].to(dtype).contiguous()
        self._bias = model.item_bias.detach()[:n].to(dtype).contiguous()
        self._max_len = model.shape.max_seq_len

    @classmethod
    def from_weights(cls, weights: ModelWeights, settings: ModelSettings) -> SessionScorer:
        if settings.scorer_threads:
            torch.set_num_threads(settings.scorer_threads)
        model = SessionRecommender.from_weights(weights)
        return cls(model, ItemIndex(weights.item_ids), weights.version, settings.scorer_dtype)

    @property
    def item_ids(self) -> list[str]:
        return self.index.ids

    def session_vectors(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """The query vectors (B x H); unknown items in a history are ignored."""
        rows, mask = self.index.encode_histories(histories, self._max_len)
        with torch.inference_mode():
            return self._model.session_vectors(torch.from_numpy(rows), torch.from_numpy(mask))

    def score(self, history: Sequence[str]) -> np.ndarray:
        """float32 scores of every item (higher is better), aligned with ``item_ids``."""
        query = self.session_vectors([history])[0]
        with torch.inference_mode():
            return self._all_scores(query).numpy()

    def score_batch(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Scores for several sessions at once (len(histories) x n_items)."""
        queries = self.session_vectors(histories)
        with torch.inference_mode():
            scores = torch.addmm(self._bias, queries.to(self._table.dtype), self._table.T)
            return scores.float().numpy()

    def top_k(
        self, history: Sequence[str], k: int, exclude: Sequence[str] = ()
    ) -> tuple[list[str], np.ndarray]:
        """The ``k`` best item ids and their scores, best first, skipping ``exclude``."""
        query = self.session_vectors([history])[0]
        with torch.inference_mode():
            scores = self._all_scores(query)
            rows = [r for r in (self.index.row(i) for i in exclude) if r >= 0]
            if rows:
                scores[torch.tensor(rows)] = float("-inf")
            best = torch.topk(scores, min(k, scores.shape[0]))
        ids = self.index.ids
        return [ids[r] for r in best.indices.tolist()], best.values.numpy()

    def _all_scores(self, query: torch.Tensor) -> torch.Tensor:
        """float32 scores of every item for one query vector."""
        return torch.addmv(self._bias, self._table, query.to(self._table.dtype)).float()
