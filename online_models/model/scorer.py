"""Scoring a session against the whole catalog, for serving: inference only, no state.

Built once per model version (``SessionScorer.from_weights``); the item matrix is kept
as one contiguous float32 tensor and each call does one encoder pass plus one
matrix-vector product. On CPU the encoder runs as a traced TorchScript graph
(``traced_backbone``: about half the time per call, shared by every version with the same
backbone). The scorer is read-only after construction, so one instance can
be shared by threads and swapped atomically when a new version arrives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from online_models.model.item_index import ItemIndex
from online_models.model.recommender import SessionRecommender, bucket_lengths
from online_models.model.traced_backbone import traced_backbone
from online_models.model.weights import ModelWeights
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
        if model.item_table.device.type == "cpu":
            lengths = bucket_lengths(model.shape.max_seq_len)
            model.backbone_call = traced_backbone(model.backbone, lengths)
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

    def _queries(
        self, histories: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query vectors (B x H) plus the history rows and mask; unknown items are ignored."""
        rows, mask = self.index.encode_histories(histories, self._max_len)
        rows_t, mask_t = torch.from_numpy(rows), torch.from_numpy(mask)
        with torch.inference_mode():
            return self._model.session_vectors(rows_t, mask_t), rows_t, mask_t

    def score(self, history: Sequence[str]) -> np.ndarray:
        """float32 scores of every item (higher is better), aligned with ``item_ids``."""
        return self._scores(history).numpy()

    def score_batch(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Scores for several sessions at once (len(histories) x n_items)."""
        queries, rows, mask = self._queries(histories)
        with torch.inference_mode():
            scores = torch.addmm(self._bias, queries.to(self._table.dtype), self._table.T)
            return self._model.add_repeat_bonus(scores.float(), rows, mask, lift=True).numpy()

    def top_k(
        self, history: Sequence[str], k: int, exclude: Sequence[str] = ()
    ) -> tuple[list[str], np.ndarray]:
        """The ``k`` best item ids and their scores, best first, skipping ``exclude``."""
        with torch.inference_mode():
            scores = self._scores(history)
            rows = [r for r in (self.index.row(i) for i in exclude) if r >= 0]
            if rows:
                scores[torch.tensor(rows)] = float("-inf")
            best = torch.topk(scores, min(k, scores.shape[0]))
        ids = self.index.ids
        return [ids[r] for r in best.indices.tolist()], best.values.numpy()

    def _scores(self, history: Sequence[str]) -> torch.Tensor:
        """float32 scores of every item for one session."""
        queries, rows, mask = self._queries([history])
        with torch.inference_mode():
            scores = torch.addmv(self._bias, self._table, queries[0].to(self._table.dtype))
            return self._model.add_repeat_bonus(scores.float()[None], rows, mask, lift=True)[0]
