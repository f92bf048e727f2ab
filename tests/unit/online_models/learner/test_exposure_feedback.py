"""Exposure examples in the learner: shown-but-ignored items as weighted negatives,
clicked-from-list items as positives, nothing at all when the weights are 0."""

from __future__ import annotations

import numpy as np
import torch

from online_models.learner.micro_batch import HeadLearner
from online_models.learner.prepared_batch import prepare_batch
from online_models.model.covisitation import CovisitationRule
from online_models.model.recommender import random_weights
from online_models.offline.evaluation import exposure_feedback_ranks, shop_exposures
from streamrec.settings import LearnerSettings
from streamrec.training_examples import EXPOSURE, TrainingExample
from tests.unit.online_models.learner.test_micro_batch import CPU, SMALL, chain_examples


def exposure(history: tuple[str, ...], clicked: str, *ignored: str) -> TrainingExample:
    return TrainingExample(
        "exposure:" + "-".join(history), "s", history, clicked, 0, EXPOSURE, negatives=ignored
    )


def learner(negative: float, positive: float) -> HeadLearner:
    settings = LearnerSettings(exposure_negative_weight=negative, exposure_positive_weight=positive)
    head = HeadLearner.from_weights(random_weights(0, SMALL), settings, CPU)
    head.learn(chain_examples(64))  # every item 0..29 has a row now
    return head


def score(head: HeadLearner, history: tuple[str, ...], item: str) -> float:
    batch = prepare_batch([TrainingExample("q", "s", history, item, 0)])
    rows = head.index.rows_of(batch.item_ids)
    histories = head._histories(rows, batch.history_slots)
    with torch.no_grad():
        session = head._forward(histories).sessions[0]
        row = head.index.row(item)
        assert row >= 0, f"{item} has a row"
        return float(session @ head.model.item_table[row] + head.model.item_bias[row])


def test_a_batch_turns_exposures_into_labelled_pairs_after_the_ranked_rows() -> None:
    clicks = chain_examples(3)
    batch = prepare_batch([exposure(("1",), "2", "1", "5"), *clicks, exposure(("7",), "", "8")])
    assert len(batch.target_slots) == 3 and batch.history_slots.shape[0] == 5
    items = [batch.item_ids[slot] for slot in batch.pair_slots]
    assert list(zip(batch.pair_rows, items, batch.pair_labels, strict=True)) == [
        (3, "2", 1.0),
        (3, "5", 0.0),  # "1" is in the session: ranking shows it whatever its score
        (4, "8", 0.0),
    ]
    plain = prepare_batch([*clicks, exposure(("7",), "", "8")], exposures=False)
    np.testing.assert_array_equal(plain.history_slots, prepare_batch(clicks).history_slots)
    assert len(plain.pair_rows) == 0


def test_a_clicked_list_moves_the_clicked_item_above_the_ignored_ones() -> None:
    history = ("i3",)
    gains = []
    for shown in ([], [exposure(history, "i20", "i21", "i22")]):
        head = learner(1.0, 1.0)
        gap_before = score(head, history, "i20") - score(head, history, "i21")
        outcome = head.learn([*chain_examples(8, seed=1), *shown])
        gains.append(score(head, history, "i20") - score(head, history, "i21") - gap_before)
        assert len(outcome.ranks) == 8, "exposure examples are not ranked"
    assert gains[1] > gains[0]


def test_exposures_alone_step_and_a_list_without_a_click_changes_nothing() -> None:
    head = learner(1.0, 1.0)
    before = head.weights().tensors
    outcome = head.learn([exposure(("i3",), "", "i21", "i22")])
    assert outcome.skipped == "" and len(outcome.ranks) == 0
    for name, value in head.weights().tensors.items():
        np.testing.assert_array_equal(before[name], value)
    outcome = head.learn([exposure(("i3",), "i20", "i21")])
    assert outcome.skipped == "" and outcome.loss > 0


def test_with_both_weights_zero_exposures_change_nothing() -> None:
    clicks = chain_examples(16, seed=2)
    with_exposures, without = learner(0.0, 0.0), learner(0.0, 0.0)
    with_exposures.learn([*clicks, exposure(("i3",), "i4", "i5")])
    without.learn(clicks)
    for name, value in without.weights().tensors.items():
        np.testing.assert_array_equal(with_exposures.weights().tensors[name], value)


def test_the_simulated_shop_reports_what_it_showed_through_the_join() -> None:
    clicks = [
        TrainingExample("c1", "s", ("a",), "b", 10),
        TrainingExample("c2", "s", ("a", "b"), "z", 20),
    ]
    made = shop_exposures(clicks, [("b", "c"), ("c", "d")])
    assert [(e.example_id, e.history, e.target_item, e.negatives) for e in made] == [
        ("exposure:shop:c1", ("a",), "b", ("c",)),
        ("exposure:shop:c2", ("a", "b"), "", ("c", "d")),
    ]


def test_the_reported_loss_is_the_next_click_part_so_the_drift_signal_does_not_step() -> None:
    clicks = chain_examples(8, seed=2)
    shown = [exposure(("i3",), "i20", "i21", "i22"), exposure(("i4",), "i23", "i24")]
    losses = []
    for batch in (clicks, [*clicks, *shown]):
        settings = LearnerSettings(steps_per_batch=1)
        head = HeadLearner.from_weights(random_weights(0, SMALL), settings, CPU)
        head.learn(chain_examples(64))
        losses.append(head.learn(batch).loss)
    assert losses[0] > 0 and abs(losses[1] - losses[0]) < 1e-5 * losses[0]


def test_the_effect_replay_runs_both_learners_on_the_same_stream_from_the_same_weights() -> None:
    stream = chain_examples(256, seed=3)
    settings = LearnerSettings(batch_size=32, exposure_negative_weight=1.0)
    rule = CovisitationRule()
    ranks = exposure_feedback_ranks(learner(1.0, 1.0).weights(), stream, settings, rule)
    assert set(ranks) == {"online", "online+exposure"}
    assert all(len(r) == len(stream) for r in ranks.values())
    # The first batch is ranked before anything is learned: both start alike.
    np.testing.assert_array_equal(ranks["online"][:32], ranks["online+exposure"][:32])
    assert not np.array_equal(ranks["online"], ranks["online+exposure"]), "the lists are learned"
