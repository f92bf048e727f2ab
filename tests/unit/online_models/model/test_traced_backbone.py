"""Serving's traced encoder: same scores as the eager model, traced once per backbone."""

from __future__ import annotations

import numpy as np
import torch

from online_models.model.recommender import (
    EncoderBatch,
    SessionRecommender,
    bucket_lengths,
    random_weights,
)
from online_models.model.scorer import SessionScorer
from online_models.model.traced_backbone import traced_backbone
from online_models.model.weights import ITEM_TABLE, ModelWeights
from streamrec.settings import ModelSettings

SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=12)


def test_traced_scores_equal_the_eager_model_for_every_bucket() -> None:
    weights = random_weights(60, SMALL)
    scorer = SessionScorer.from_weights(weights, SMALL)
    assert scorer._model.backbone_call.traced_lengths == bucket_lengths(12)  # type: ignore[attr-defined]
    histories = [[f"item-{i}" for i in range(n)] for n in (1, 2, 4, 7, 12, 15)]
    np.testing.assert_allclose(
        scorer.score_batch(histories), eager_scores(weights, scorer, histories), atol=1e-4
    )


def eager_scores(
    weights: ModelWeights, scorer: SessionScorer, histories: list[list[str]]
) -> np.ndarray:
    """What a freshly built eager model of ``weights`` scores ``histories`` at."""
    eager = SessionRecommender.from_weights(weights).eval()
    rows, mask = scorer.index.encode_histories(histories, 12)
    with torch.no_grad():
        rows_t, mask_t = torch.from_numpy(rows), torch.from_numpy(mask)
        batch = EncoderBatch(rows_t, mask_t)
        return eager.scores(eager.session_vectors(batch), rows_t, mask_t, lift=True).numpy()


def test_versions_sharing_a_backbone_share_one_trace() -> None:
    weights = random_weights(30, SMALL)
    moved = dict(weights.tensors)
    moved[ITEM_TABLE] = moved[ITEM_TABLE] + 1.0  # what an online delta changes
    later = ModelWeights(weights.version + 1, weights.shape, weights.item_ids, moved)
    first = SessionScorer.from_weights(weights, SMALL)._model.backbone_call
    second = SessionScorer.from_weights(later, SMALL)._model.backbone_call
    assert first is second
    retrained = SessionRecommender.from_weights(random_weights(30, SMALL, seed=5))
    assert traced_backbone(retrained.backbone, bucket_lengths(12)) is not first
    assert traced_backbone(first_model_backbone(weights), bucket_lengths(12)) is first


def first_model_backbone(weights: ModelWeights) -> torch.nn.Module:
    return SessionRecommender.from_weights(weights).backbone


def test_versions_sharing_a_backbone_share_its_module_and_score_as_their_own_weights() -> None:
    weights = random_weights(30, SMALL)
    moved = dict(weights.tensors)
    moved[ITEM_TABLE] = moved[ITEM_TABLE] * 2.0
    later = ModelWeights(weights.version + 1, weights.shape, weights.item_ids, moved)
    first = SessionScorer.from_weights(weights, SMALL)
    second = SessionScorer.from_weights(later, SMALL)
    retrained = SessionScorer.from_weights(random_weights(30, SMALL, seed=5), SMALL)
    assert second._model.backbone is first._model.backbone
    assert retrained._model.backbone is not first._model.backbone
    histories = [[f"item-{i}" for i in range(n)] for n in (1, 3, 12)]
    for version, scorer in ((later, second), (weights, first)):
        np.testing.assert_allclose(
            scorer.score_batch(histories), eager_scores(version, scorer, histories), atol=1e-4
        )
