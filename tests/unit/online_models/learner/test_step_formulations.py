"""The vectorised head step computes what the per-example formulation computed.

A fixed small stream (new items arriving, histories longer than the encoder's window,
purchases, empty histories) goes through ``HeadLearner`` and through the formulation it
replaced (``reference_head_learner.py``) from the same weights. Float rounding differs
(one encoder call instead of one per length bucket, a different summation order), so an
exact near-tie may rank the other way; the stated tolerance: at most 1% of ranks differ,
each batch's loss within 1e-4 (relative), the final item table within 1e-4.
"""

from __future__ import annotations

import random
from unittest.mock import patch

import numpy as np
import torch

from online_models.learner.micro_batch import CandidateCrossEntropy, HeadLearner
from online_models.model import prequential_ranks
from online_models.model.covisitation import CovisitationRule, update_covisitation
from online_models.model.item_index import ItemIndex
from online_models.model.prequential_ranks import exact_ranks
from online_models.model.ranking_metrics import MISS_RANK, target_ranks
from online_models.model.recommender import SessionRecommender, random_weights
from online_models.model.weights import ITEM_TABLE
from streamrec.settings import LearnerSettings, ModelSettings
from streamrec.training_examples import TrainingExample
from tests.unit.online_models.learner.reference_head_learner import ReferenceHeadLearner

SMALL = ModelSettings(hidden_size=16, num_layers=2, num_heads=2, max_seq_len=6)
SETTINGS = LearnerSettings(sampled_negatives=64)
CPU = torch.device("cpu")


def drifting_stream(count: int, seed: int = 3) -> list[TrainingExample]:
    """Sessions over a catalog that grows: item i is followed by i+1, new ids keep coming."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        catalog = 150 + n // 4  # about one new item every four examples
        start = rng.randrange(catalog)
        length = rng.choice((0, 1, 2, 3, 5, 9))
        history = tuple(f"item-{(start + k) % catalog}" for k in range(length))
        target = f"item-{(start + length) % catalog}"
        kind, weight = ("purchase", 5.0) if n % 11 == 0 else ("click", 1.0)
        out.append(TrainingExample(f"e{n}", f"s{n}", history, target, n, kind, weight))
    return out


def test_new_and_reference_formulations_rank_and_learn_alike() -> None:
    weights = random_weights(120, SMALL)
    # the reference predates co-visitation: the table stays empty, so its term is zero
    learner = HeadLearner.from_weights(weights, SETTINGS, CPU, CovisitationRule(window=0))
    reference = ReferenceHeadLearner(
        SessionRecommender.from_weights(weights), ItemIndex(weights.item_ids), SETTINGS
    )
    stream = drifting_stream(960)
    new_ranks, old_ranks = [], []
    for start in range(0, len(stream), 64):
        batch = stream[start : start + 64]
        outcome = learner.learn(batch)
        ranks, loss = reference.learn(batch)
        new_ranks.append(outcome.ranks)
        old_ranks.append(ranks)
        assert outcome.skipped == ""
        assert abs(outcome.loss - loss) <= 1e-4 * max(abs(loss), 1.0), start
    new, old = np.concatenate(new_ranks), np.concatenate(old_ranks)
    assert (new != old).mean() <= 0.01
    assert ((new < 20) == (old < 20)).mean() >= 0.99 and (new < 20).mean() > 0.1
    assert learner.index.ids == reference.index.ids
    table = learner.weights().tensors[ITEM_TABLE]
    np.testing.assert_allclose(
        table, reference.model.item_table.detach()[: len(table)].numpy(), atol=1e-4
    )


def test_a_bfloat16_ranking_pass_with_the_float32_recheck_gives_the_exact_ranks() -> None:
    weights = random_weights(400, SMALL)
    exact = HeadLearner.from_weights(
        weights, SETTINGS.model_copy(update={"rank_dtype": "float32"}), CPU
    )
    screened = HeadLearner.from_weights(
        weights, SETTINGS.model_copy(update={"rank_dtype": "bfloat16"}), CPU
    )
    assert screened.rank_dtype == torch.bfloat16
    stream = drifting_stream(640, seed=5)
    for start in range(0, len(stream), 64):
        batch = stream[start : start + 64]
        np.testing.assert_array_equal(screened.learn(batch).ranks, exact.learn(batch).ranks)


def test_exact_ranks_score_the_known_targets_alone_and_rank_as_the_full_pass() -> None:
    model = SessionRecommender.from_weights(random_weights(300, SMALL))
    generator = torch.Generator().manual_seed(2)
    rows = torch.randint(0, 300, (40, 6), generator=generator)
    mask = (torch.rand(40, 6, generator=generator) < 0.7).long()
    mask[:, -1] = 1
    sessions = torch.randn(40, SMALL.hidden_size, generator=generator)
    targets = torch.randint(0, 300, (40,), generator=generator)
    targets[::4] = -1  # unknown: a miss
    targets[1::4] = rows[1::4, -1]  # one of the session's items: a hit
    full = target_ranks(model.scores(sessions, rows, mask, lift=True), targets)
    with patch.object(model, "scores", wraps=model.scores) as scores:
        ranks = exact_ranks(model, sessions, rows, mask, targets, (targets >= 0).nonzero()[:, 0])
    assert scores.call_args.args[0].shape[0] == int((targets >= 0).sum())
    np.testing.assert_array_equal(ranks.numpy(), full.numpy())
    assert (ranks[::4] == MISS_RANK).all() and (ranks[1::4] < 20).all()


def _lifted_model(items: int, seed: int) -> SessionRecommender:
    """A model whose co-visitation table is filled and blended in, so ranks see every lift."""
    model = SessionRecommender.from_weights(random_weights(items, SMALL, seed=seed))
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, items, (2, 20 * items))
    amounts = rng.random(20 * items).astype(np.float32)
    update_covisitation(model.covis_items, model.covis_weight, *pairs, amounts, decay=0.98)
    with torch.no_grad():
        model.covis_blend.fill_(0.7)
    return model


def test_ranks_counted_a_block_of_items_at_a_time_are_the_whole_matrixs() -> None:
    model = _lifted_model(3000, seed=1)
    generator = torch.Generator().manual_seed(6)
    rows = torch.randint(0, 3000, (64, 6), generator=generator)
    mask = (torch.rand(64, 6, generator=generator) < 0.7).long()
    mask[:, -1] = 1
    rows[1, -3:] = rows[1, -1]  # an item clicked three times
    sessions = torch.randn(64, SMALL.hidden_size, generator=generator) * 3
    targets = torch.randint(0, 3000, (64,), generator=generator)
    targets[1::4] = rows[1::4, -1]  # one of the session's items
    with torch.no_grad():
        for line in range(0, 64, 8):  # an item scoring exactly as the target: a tie
            twin = (int(targets[line]) + 1) % 3000
            model.item_table[twin] = model.item_table[targets[line]]
            model.item_bias[twin] = model.item_bias[targets[line]]
        whole = target_ranks(model.scores(sessions, rows, mask, lift=True), targets)
        lines = torch.arange(64)
        for width in (97, 1024):  # a last block narrower than the others, and wider ones
            blocked = exact_ranks(model, sessions, rows, mask, targets, lines, block_width=width)
            np.testing.assert_array_equal(blocked.numpy(), whole.numpy())
    assert 10 < int((whole < 20).sum()) < 64  # hits and misses both
    assert (whole[::8] > 0).all()  # each twin counts against its target


def test_a_constant_model_misses_every_target_whether_counted_in_blocks_or_not() -> None:
    model = SessionRecommender.from_weights(random_weights(500, SMALL))
    with torch.no_grad():
        model.item_table.fill_(0.25)
        model.item_bias.fill_(0.0)
    rows = torch.zeros(8, 6, dtype=torch.long)
    mask = torch.zeros(8, 6, dtype=torch.long)  # no history: nothing lifted
    sessions = torch.ones(8, SMALL.hidden_size)
    targets = torch.arange(8) * 50
    lines = torch.arange(8)
    for width in (None, 64):
        ranks = exact_ranks(model, sessions, rows, mask, targets, lines, block_width=width)
        assert (ranks == MISS_RANK).all()


def test_the_learner_ranks_a_large_catalog_in_blocks_as_in_one_matrix() -> None:
    weights = random_weights(400, SMALL)
    whole = HeadLearner.from_weights(weights, SETTINGS, CPU)
    blocked = HeadLearner.from_weights(weights, SETTINGS, CPU)
    stream = drifting_stream(640, seed=7)
    with (
        patch.object(prequential_ranks, "BLOCKED_FROM_ITEMS", 0),
        patch.object(prequential_ranks, "BLOCK_SCORES", 64 * 60),  # 60 items a block
        patch.object(
            prequential_ranks, "blocked_ranks", wraps=prequential_ranks.blocked_ranks
        ) as counted,
    ):
        for start in range(0, len(stream), 64):
            batch = stream[start : start + 64]
            ranks = blocked.learn(batch).ranks
            with patch.object(prequential_ranks, "BLOCKED_FROM_ITEMS", 1 << 30):
                np.testing.assert_array_equal(ranks, whole.learn(batch).ranks)
    assert counted.call_count == len(stream) // 64


def test_the_candidate_cross_entropy_is_torchs_in_value_and_gradient() -> None:
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(30, 50, generator=generator) * 3
    labels = torch.randint(0, 50, (30,), generator=generator)
    logits[torch.arange(30), (labels + 1) % 50] = -torch.inf  # masked candidates
    weights = torch.rand(30, generator=generator)
    ours, theirs = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    losses, log_probs = CandidateCrossEntropy.apply(ours, labels)
    expected = torch.nn.functional.cross_entropy(theirs, labels, reduction="none")
    torch.testing.assert_close(losses, expected, rtol=0, atol=0)
    torch.testing.assert_close(log_probs, torch.log_softmax(logits, dim=1), rtol=0, atol=0)
    (losses * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-6, atol=1e-7)
