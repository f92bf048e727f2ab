"""The blended score is one function: the learner's ranking pass, evaluation and serving's
scorer rank a fixed stream alike; the co-visitation rows travel in deltas and snapshots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from online_models.learner import micro_batch
from online_models.learner.micro_batch import HeadLearner
from online_models.learner.prepared_batch import prepare_batch
from online_models.model import covisitation
from online_models.model.item_index import ItemIndex
from online_models.model.recommender import SessionRecommender, random_weights
from online_models.model.scorer import SessionScorer
from online_models.model.weights import COVIS_ITEMS, COVIS_WEIGHT, apply_deltas
from online_models.offline.training import rank_examples
from online_models.registry.blobs import (
    decode_delta,
    decode_snapshot,
    encode_delta,
    encode_snapshot,
)
from online_models.registry.weight_spec import WeightSpec
from streamrec.settings import LearnerSettings, ModelSettings
from tests.unit.online_models.learner.test_micro_batch import chain_examples

SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=6, initial_items=16)
SETTINGS = LearnerSettings(batch_size=32, sampled_negatives=8)
CPU = torch.device("cpu")


def trained_learner() -> HeadLearner:
    learner = HeadLearner.from_weights(random_weights(0, SMALL), SETTINGS, CPU)
    examples = chain_examples(256, seed=1)
    for start in range(0, len(examples), 32):
        learner.learn(examples[start : start + 32])
    return learner


def test_learner_evaluation_and_serving_rank_with_the_same_blended_score() -> None:
    learner = trained_learner()
    weights = learner.weights()
    assert (weights.tensors[COVIS_ITEMS] >= 0).any()  # the table holds evidence
    assert float(learner.model.covis_blend.detach()) != 1.0  # and the blend moved from its start
    batch = chain_examples(48, seed=9)
    evaluated = rank_examples(
        SessionRecommender.from_weights(weights), ItemIndex(weights.item_ids), batch, CPU
    )
    scorer = SessionScorer.from_weights(weights, SMALL)
    served = scorer.score_batch([e.history for e in batch])
    targets = scorer.index.rows_of([e.target_item for e in batch])
    at_target = served[np.arange(len(batch)), targets]
    served_ranks = (served >= at_target[:, None]).sum(axis=1) - 1  # ties count against
    ranked = learner.learn(batch).ranks  # scores before the step
    np.testing.assert_array_equal(ranked, evaluated)
    inside = evaluated < 20
    assert inside.mean() > 0.5
    np.testing.assert_array_equal(served_ranks[inside], evaluated[inside])
    assert (served_ranks[~inside] >= 20).all()
    without = SessionScorer.from_weights(weights, SMALL)
    without._model.covis_blend.zero_()
    plain = without.score_batch([e.history for e in batch])
    assert not np.allclose(plain, served)  # the co-visitation term is part of the score


def test_deltas_carry_the_changed_covisitation_rows_and_round_trips_are_exact() -> None:
    learner = trained_learner()
    published = decode_snapshot(encode_snapshot(learner.weights()))
    for name, value in learner.weights().tensors.items():
        np.testing.assert_array_equal(published.tensors[name], value, err_msg=name)
        assert published.tensors[name].dtype == value.dtype
    learner.mark_published(published.version)
    learner.learn(chain_examples(32, seed=5))
    delta = learner.delta()
    delta.version = published.version + 1
    changed = np.flatnonzero(
        (learner.weights().tensors[COVIS_WEIGHT] != published.tensors[COVIS_WEIGHT]).any(axis=1)
    )
    assert len(changed) and np.isin(changed, delta.rows).all()
    decoded = decode_delta(encode_delta(delta), WeightSpec.for_shape(published.shape))
    assert decoded.row_values[COVIS_ITEMS].dtype == np.int32
    rebuilt = apply_deltas(published, [decoded])
    for name, value in learner.weights().tensors.items():
        np.testing.assert_array_equal(rebuilt.tensors[name], value, err_msg=name)


def test_a_snapshot_from_before_covisitation_loads_with_an_empty_table() -> None:
    weights = random_weights(5, SMALL)
    del weights.tensors[COVIS_ITEMS], weights.tensors[COVIS_WEIGHT]
    loaded = decode_snapshot(encode_snapshot(weights))
    assert (loaded.tensors[COVIS_ITEMS] == -1).all() and loaded.tensors[COVIS_ITEMS].shape == (
        5,
        SMALL.covis_neighbours,
    )
    model = SessionRecommender.from_weights(loaded)
    assert (model.covis_items[:5] == -1).all()


# 3: a term large enough to matter; 400: past float32's exp range (88), which a long
# session's summed evidence reaches with a fitted blend (the loss was infinite there); with
# sharp head logits (x 200) the probabilities at the evidenced candidates underflow as well
@pytest.mark.parametrize(
    ("blend", "sharpness", "past_exp_range"),
    [(3.0, 1.0, False), (400.0, 1.0, True), (400.0, 200.0, True)],
)
@pytest.mark.parametrize("selects", [True, False], ids=["cpu", "gpu-shapes"])
def test_the_sparse_blended_loss_is_the_cross_entropy_of_the_blended_logits(
    blend: float,
    sharpness: float,
    past_exp_range: bool,
    selects: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # CPU code selects the evidence that counts; a GPU's keeps fixed shapes (no waits)
    for module in (micro_batch, covisitation):
        monkeypatch.setattr(module, "selects_freely", lambda device: selects)
    learner = trained_learner()
    model = learner.model
    with torch.no_grad():
        model.covis_blend.fill_(blend)
    batch = prepare_batch(chain_examples(48, seed=9), exposures=False)
    item_rows = learner.index.rows_of(batch.item_ids)
    histories = learner._histories(item_rows, batch.history_slots)
    rows, mask = histories.device_rows.rows, histories.device_rows.mask
    candidates = torch.arange(model.n_items)
    labels = torch.as_tensor(item_rows[batch.target_slots])
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(labels), model.n_items, generator=generator) * sharpness
    logits[labels != 0, 0] = -torch.inf  # a masked candidate (never the label)
    evidence = model.covisitation_evidence(rows, mask)
    pairs = evidence.lines * model.n_items + evidence.columns
    assert len(torch.unique(pairs)) < len(pairs)  # some pairs repeat: their terms add up
    log_probs = torch.log_softmax(logits, dim=1)
    losses = torch.nn.functional.nll_loss(log_probs, labels, reduction="none")
    explored = np.arange(len(labels))
    sparse = learner._blend_losses(histories, explored, candidates, log_probs, labels, losses)
    term = model.covisitation_at(rows, mask, candidates)
    assert bool(term.max() > 88) is past_exp_range
    blended = logits + term
    dense = torch.nn.functional.cross_entropy(blended, labels, reduction="none")
    assert sparse.isfinite().all()
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5 * sharpness)  # float32
    assert (sparse != losses).float().mean() > 0.5  # the term moved most losses
    (sparse_gradient,) = torch.autograd.grad(sparse.sum(), model.covis_blend)
    (dense_gradient,) = torch.autograd.grad(dense.sum(), model.covis_blend)
    torch.testing.assert_close(sparse_gradient, dense_gradient, rtol=1e-5 * sharpness, atol=1e-6)
