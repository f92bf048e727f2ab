"""The model's pure learning paths: head steps, deltas, guards, training, ranking."""

from __future__ import annotations

import math
import random
from unittest.mock import patch

import numpy as np
import torch

from flows.example_builder import examples_from_events
from flows.feature_config import FeatureConfig
from online_models.learner import micro_batch
from online_models.learner.micro_batch import GUARD_APPLIED, NO_LISTS, HeadLearner
from online_models.learner.prepared_batch import prepare_batch
from online_models.model import recommender
from online_models.model.item_index import ItemIndex
from online_models.model.ranking_metrics import MISS_RANK, ranking_totals, target_ranks
from online_models.model.recommender import (
    EncoderBatch,
    SessionRecommender,
    history_tensors,
    random_weights,
)
from online_models.model.weights import COVIS_ITEMS, COVIS_WEIGHT, ITEM_TABLE, apply_deltas
from online_models.offline.training import evaluate_examples, split_by_time, train
from streamrec.events import Event
from streamrec.settings import LearnerSettings, ModelSettings, TrainSettings
from streamrec.training_examples import TrainingExample

SMALL = ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=6, initial_items=16)
CPU = torch.device("cpu")


def chain_examples(count: int, items: int = 30, seed: int = 0) -> list[TrainingExample]:
    """A learnable world: after item i comes item i+1 (mod items)."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        start = rng.randrange(items)
        length = rng.randint(1, 4)
        history = tuple(f"i{(start + k) % items}" for k in range(length))
        target = f"i{(start + length) % items}"
        out.append(TrainingExample(f"e{seed}-{n}", f"s{n}", history, target, ts=n))
    return out


def test_delta_applied_to_the_published_weights_equals_the_learner() -> None:
    learner = HeadLearner.from_weights(
        random_weights(0, SMALL), LearnerSettings(batch_size=32, sampled_negatives=8), CPU
    )
    examples = chain_examples(200)
    learner.learn(examples[:32])
    published = learner.weights()
    learner.mark_published(7)
    published.version = 7
    for start in range(32, 200, 32):
        learner.learn(examples[start : start + 32])
    delta = learner.delta()
    delta.version = 8
    rebuilt = apply_deltas(published, [delta])
    current = learner.weights()
    assert rebuilt.item_ids == current.item_ids
    for name, value in current.tensors.items():
        np.testing.assert_array_equal(rebuilt.tensors[name], value, err_msg=name)
    assert len(delta.rows) < rebuilt.n_items or rebuilt.n_items <= 8 + 32


def test_online_head_updates_learn_a_sequential_pattern() -> None:
    learner = HeadLearner.from_weights(
        random_weights(0, SMALL),
        LearnerSettings(batch_size=64, sampled_negatives=0, lr=0.02),
        CPU,
    )
    examples = chain_examples(3000)
    hit_rates = []
    for start in range(0, len(examples), 64):
        hit_rates.append(learner.learn(examples[start : start + 64]).ranking.hit_rate)
    # 30 items, HR@20 of a random ranking is 2/3: the learner must do clearly better.
    assert np.mean(hit_rates[-10:]) > 0.95
    assert learner.model.backbone.embeddings.LayerNorm.weight.grad is None  # frozen


def test_non_finite_loss_skips_the_step_and_changes_nothing() -> None:
    learner = HeadLearner.from_weights(random_weights(5, SMALL), LearnerSettings(), CPU)
    batch = [
        TrainingExample("x", "s", ("item-1",), "item-2", 0, weight=math.nan),
        TrainingExample("y", "s", ("item-2",), "item-3", 1),
    ]
    before = learner.weights()
    outcome = learner.learn(batch)
    assert outcome.skipped == "non_finite_loss"
    after = learner.weights()
    for name, value in before.tensors.items():
        np.testing.assert_array_equal(after.tensors[name], value)


def test_the_guard_on_the_device_leaves_a_non_finite_batch_without_a_trace() -> None:
    learner = HeadLearner.from_weights(random_weights(0, SMALL), LearnerSettings(), CPU)
    learner.learn(chain_examples(64))
    before = learner.weights().tensors
    adam = learner.dense_optimizer
    state = {k: v.clone() for k, v in adam.state[learner.model.covis_blend].items()}
    poisoned = [e._replace(weight=math.nan) for e in chain_examples(32, seed=1)]
    outcome = learner.learn(poisoned)
    assert (outcome.skipped, math.isnan(outcome.loss)) == ("non_finite_loss", True)
    assert len(outcome.ranks) == 32  # ranked before the steps, as any batch
    after = learner.weights().tensors
    for name, values in before.items():  # rows, dense head, blend and table: untouched
        np.testing.assert_array_equal(after[name][: len(values)], values)
    for key, value in adam.state[learner.model.covis_blend].items():  # moments and count
        assert torch.equal(value, state[key]), key
    outcome = learner.learn(chain_examples(32, seed=2))  # the next batch learns again
    assert outcome.skipped == "" and math.isfinite(outcome.loss)
    assert adam.state[learner.model.covis_blend]["step"] == state["step"] + 2
    assert not np.array_equal(learner.weights().tensors[ITEM_TABLE], before[ITEM_TABLE])


def test_history_rows_get_gradients_through_the_frozen_encoder() -> None:
    learner = HeadLearner.from_weights(random_weights(0, SMALL), LearnerSettings(), CPU)
    examples = chain_examples(64)
    learner.learn(examples)  # every item has a row now
    batch = prepare_batch(examples)
    item_rows = learner.index.rows_of(batch.item_ids)
    histories = learner._histories(item_rows, batch.history_slots)
    forward = learner._forward(histories)
    before = learner.model.item_table.detach()[forward.inputs].clone()
    targets = item_rows[batch.target_slots]
    step = learner._step(forward, histories, targets, batch.weights, NO_LISTS, torch.tensor(True))
    assert step is not None and step[GUARD_APPLIED] == 1
    assert forward.input_rows.grad is not None and forward.input_rows.grad.abs().sum() > 0
    assert not torch.equal(learner.model.item_table.detach()[forward.inputs], before)
    assert all(p.grad is None for p in learner.model.backbone.parameters())


def test_online_steps_leave_targets_that_repeat_a_session_item_out_of_the_loss() -> None:
    learner = HeadLearner.from_weights(random_weights(0, SMALL), LearnerSettings(), CPU)
    learner.learn(chain_examples(64))
    before = learner.weights()
    repeats = [TrainingExample(f"r{n}", f"s{n}", ("i1", "i2"), "i1", n) for n in range(8)]
    outcome = learner.learn(repeats)
    assert outcome.ranks.max() < 2  # the session's items rank first
    for name, value in before.tensors.items():
        if name in (COVIS_ITEMS, COVIS_WEIGHT):
            continue  # co-visitation counts every example, repeats included
        np.testing.assert_array_equal(learner.weights().tensors[name], value, err_msg=name)
    learner.learn([*repeats, TrainingExample("x", "s", ("i1", "i2"), "i3", 9)])
    assert not np.array_equal(
        learner.weights().tensors["head.item_table"], before.tensors["head.item_table"]
    )


def test_a_batch_of_purchases_without_history_steps_without_input_rows() -> None:
    learner = HeadLearner.from_weights(random_weights(0, SMALL), LearnerSettings(), CPU)
    learner.learn(chain_examples(64))
    before = learner.weights().tensors["head.projection.bias"].copy()
    bought = [TrainingExample(f"b{n}", f"s{n}", (), f"i{n}", n, "purchase", 5.0) for n in range(4)]
    outcome = learner.learn(bought)
    assert outcome.skipped == "" and math.isfinite(outcome.loss) and outcome.loss > 0
    assert not np.array_equal(learner.weights().tensors["head.projection.bias"], before)


def test_a_new_target_item_is_ranked_well_right_after_its_first_appearance() -> None:
    learner = HeadLearner.from_weights(
        random_weights(0, SMALL), LearnerSettings(sampled_negatives=0), CPU
    )
    learner.learn(chain_examples(500))
    first = TrainingExample("n1", "a", ("i1", "i2"), "brand-new", 10)
    assert learner.learn([first]).ranks[0] == MISS_RANK  # unknown before
    again = TrainingExample("n2", "b", ("i1", "i2"), "brand-new", 11)
    assert learner.learn([again]).ranks[0] < 20


@patch.object(recommender, "GROUPED_FROM_SESSIONS", 2)
def test_cut_and_grouped_histories_encode_as_in_the_full_padded_batch() -> None:
    model = SessionRecommender.from_weights(random_weights(40, SMALL)).eval()
    index = ItemIndex(model.to_weights(0, [f"item-{i}" for i in range(40)]).item_ids)
    histories = [[f"item-{i}" for i in range(n)] for n in (1, 2, 3, 6, 0)]
    rows, mask = index.encode_histories(histories, SMALL.max_seq_len)
    grouped = history_tensors(rows, mask, CPU)  # short sessions apart from the long one
    assert [(m.tolist(), width) for m, width in grouped.groups] == [([0, 1, 2, 4], 5), ([3], 6)]
    with torch.no_grad():
        together = model.encode(EncoderBatch(torch.from_numpy(rows), torch.from_numpy(mask)))
        torch.testing.assert_close(model.encode(grouped), together)
        for i, width in enumerate((2, 2, 5, 6, 2)):  # the buckets of max_seq_len 6: 2, 5, 6
            alone = history_tensors(rows[i : i + 1], mask[i : i + 1], CPU)
            assert alone.rows.shape[1] == width and alone.groups == ()
            torch.testing.assert_close(model.encode(alone)[0], together[i])
    assert together[4].abs().sum() == 0  # an empty history encodes to zeros


def test_a_small_batch_is_encoded_in_one_call_on_a_cpu_and_a_large_one_in_groups() -> None:
    lengths = np.array([1, 6] * 64)  # short and long sessions: 128 of them
    mask = (np.arange(6) >= 6 - lengths[:, None]).astype(np.int64)
    rows = np.zeros_like(mask)
    assert len(history_tensors(rows, mask, CPU).groups) == 2
    assert history_tensors(rows[:127], mask[:127], CPU).groups == ()  # serving's batches


@patch.object(recommender, "GROUPED_FROM_SESSIONS", 2)
def test_on_a_gpu_a_batch_is_encoded_in_one_call() -> None:
    rows, mask = np.zeros((3, 6), dtype=np.int64), np.zeros((3, 6), dtype=np.int64)
    mask[0, -1:] = mask[1, -6:] = 1
    assert history_tensors(rows, mask, CPU).groups != ()
    assert history_tensors(rows, mask, torch.device("meta")).groups != ()
    with (
        patch.object(torch.Tensor, "pin_memory", lambda self: self),
        patch.object(torch.Tensor, "to", lambda self, device, non_blocking=False: self),
    ):
        assert history_tensors(rows, mask, torch.device("cuda")).groups == ()


def test_training_beats_an_untrained_model_and_keeps_the_best_epoch() -> None:
    examples = chain_examples(1500, items=60)
    result = train(SMALL, TrainSettings(epochs=3, batch_size=64, lr=0.01, patience=1), examples)
    _, validation = split_by_time(examples, 0.1)
    untrained = SessionRecommender(result.weights.shape, 64)
    index = ItemIndex(result.weights.item_ids)
    untrained.add_rows(len(index))
    baseline = evaluate_examples(untrained, index, validation, CPU).hit_rate
    assert result.metrics["hr@20"] > baseline + 0.2
    assert result.metrics["hr@20"] == max(h["hr@20"] for h in result.history)
    resumed = train(SMALL, TrainSettings(epochs=1, batch_size=64), examples, result.weights)
    assert resumed.weights.item_ids[: len(index)] == index.ids


def test_ranks_count_ties_against_the_target_and_unknown_as_miss() -> None:
    scores = torch.tensor([[1.0, 1.0, 0.5], [0.1, 0.9, 0.3]])
    ranks = target_ranks(scores, torch.tensor([0, -1]))
    assert ranks.tolist() == [1, MISS_RANK]
    totals = ranking_totals(ranks, cutoff=2)
    assert (totals.hits, totals.reciprocal_rank_sum) == (1, 0.5)


def test_examples_from_events_follow_the_flow_contract() -> None:
    def event(eid: str, kind: str, sid: str, item: str, ts: int) -> Event:
        return Event(event_id=eid, type=kind, session_id=sid, ts=ts, item_id=item)

    events = [
        event("1", "click", "a", "x", 1),
        event("2", "click", "a", "y", 2),
        event("2", "click", "a", "y", 2),  # replayed duplicate
        event("3", "purchase", "a", "y", 3),
        event("4", "click", "b", "z", 4),
    ]
    examples = list(examples_from_events(events, FeatureConfig(history_len=5)))
    assert [(e.kind, e.history, e.target_item) for e in examples] == [
        ("click", ("x",), "y"),
        ("purchase", ("x", "y"), "y"),
    ]
    assert examples[1].weight > 1


def test_new_rows_start_from_the_medians_of_evenly_spaced_rows_in_a_large_catalog() -> None:
    learner = HeadLearner.from_weights(random_weights(400, SMALL, seed=3), LearnerSettings())
    model = learner.model
    with torch.no_grad():
        model.item_bias[:400] = torch.arange(400.0)  # every 100th row: their median is 100
        model.item_table[:400] *= torch.linspace(0.1, 4.0, 400)[:, None]
    table, bias = model.item_table[:400].detach().clone(), model.item_bias[:400].detach().clone()
    sessions = torch.randn(2, SMALL.hidden_size)
    with patch.object(micro_batch, "MEDIAN_ROWS", 4):  # 400 rows: every 100th
        learner._add_items(2, np.array([400, 401]), sessions)
    spaced = table[::100].norm(dim=1).median()
    assert float(model.item_bias[400].detach()) == float(bias[::100].median()) == 100.0
    torch.testing.assert_close(model.item_table[400].norm(), spaced * micro_batch.NEW_ROW_SCALE)
    assert not torch.isclose(spaced, table.norm(dim=1).median()), "a different median"
