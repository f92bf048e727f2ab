"""The co-visitation table: bounded top-K rows, decay, new items, position-weighted evidence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from online_models.model import covisitation
from online_models.model.covisitation import (
    DECAY,
    REVERSE,
    WINDOW,
    CovisitationRule,
    position_weights,
    session_evidence,
    successor_pairs,
    update_covisitation,
)
from online_models.model.covisitation_warmup import relearn_successors
from online_models.model.item_index import ItemIndex
from online_models.model.recommender import SessionRecommender
from online_models.model.weights import COVIS_NEIGHBOURS, ModelShape
from streamrec.settings import ModelSettings
from streamrec.training_examples import TrainingExample


def table(rows: int, neighbours: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((rows, neighbours), -1, dtype=torch.int32), torch.zeros(rows, neighbours)


def add(items, weights, pairs: list[tuple[int, int, float]], decay: float = 1.0) -> torch.Tensor:
    sources, targets, amounts = zip(*pairs, strict=True)
    return update_covisitation(
        items, weights, np.array(sources), np.array(targets),
        np.array(amounts, dtype=np.float32), decay,
    )  # fmt: skip


def row_of(items, weights, row: int) -> dict[int, float]:
    return {
        int(i): round(float(w), 6)
        for i, w in zip(items[row], weights[row], strict=True)
        if int(i) >= 0
    }


def test_a_row_keeps_its_k_heaviest_successors_heaviest_first() -> None:
    items, weights = table(6, 2)
    changed = add(items, weights, [(0, 1, 1.0), (0, 2, 3.0), (0, 3, 2.0), (0, 1, 0.5), (4, 5, 1.0)])
    assert changed.tolist() == [0, 4]
    assert items[0].tolist() == [2, 3] and weights[0].tolist() == [3.0, 2.0]
    assert row_of(items, weights, 4) == {5: 1.0}
    assert row_of(items, weights, 1) == {}  # untouched rows stay empty


def test_counts_decay_by_the_weight_a_row_receives() -> None:
    items, weights = table(4, 3)
    add(items, weights, [(0, 1, 1.0)], decay=0.5)
    add(items, weights, [(0, 2, 1.0), (0, 3, 1.0)], decay=0.5)
    # row 0 received 2 units in the second batch: the old count decays by 0.5 ** 2
    assert row_of(items, weights, 0) == {2: 1.0, 3: 1.0, 1: 0.25}


def test_a_fresh_successor_displaces_a_stale_one() -> None:
    items, weights = table(4, 1)
    add(items, weights, [(0, 1, 1.0)], decay=0.9)
    add(items, weights, [(0, 2, 0.5)], decay=0.9)
    assert items[0].tolist() == [1]  # a lighter newcomer does not enter a full row
    for _ in range(15):  # each batch decays 1 by 0.9 ** 0.5
        add(items, weights, [(0, 2, 0.5)], decay=0.9)
    assert items[0].tolist() == [2]  # 1 decayed below 2's count and was dropped


def test_pairs_come_from_the_last_window_items_linearly_weighted() -> None:
    rows = np.array([[0, 7, 8, 9], [0, 0, 0, 4]])
    mask = np.array([[0, 1, 1, 1], [0, 0, 0, 1]])
    targets = np.array([5, 4])  # the second target repeats its only history item: no pair
    sources, successors, amounts = successor_pairs(rows, mask, targets, window=2)
    assert sources.tolist() == [8, 9] and successors.tolist() == [5, 5]
    np.testing.assert_allclose(amounts, [0.5, 1.0])
    assert len(successor_pairs(rows, mask, targets, window=0)[0]) == 0  # window 0: off


def test_reverse_pairs_count_each_pair_backwards_at_their_share() -> None:
    rows = np.array([[0, 7, 8, 9]])
    mask = np.array([[0, 1, 1, 1]])
    sources, successors, amounts = successor_pairs(rows, mask, np.array([5]), 2, reverse=0.5)
    pairs = sorted(zip(sources.tolist(), successors.tolist(), amounts.tolist(), strict=True))
    assert pairs == [(5, 8, 0.25), (5, 9, 0.5), (8, 5, 0.5), (9, 5, 1.0)]


@pytest.mark.parametrize("selects", [True, False], ids=["cpu", "gpu-shapes"])
def test_evidence_sums_the_history_rows_neighbours_by_position(
    selects: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # on a GPU every position is kept (fixed shape), on CPU the counted ones are picked
    monkeypatch.setattr(covisitation, "selects_freely", lambda device: selects)
    items, weights = table(6, 2)
    add(items, weights, [(1, 3, 2.0), (2, 3, 1.0), (2, 4, 4.0)])
    rows = torch.tensor([[1, 2], [0, 2]])
    mask = torch.tensor([[1, 1], [0, 1]])
    evidence = session_evidence(items, weights, rows, mask, window=2, n_items=6)
    positions = 3 if selects else rows.numel()  # padding dropped only where it is free
    assert len(evidence.values) == positions * items.shape[1]
    found: dict[tuple[int, int], float] = {}
    for line, column, value in zip(evidence.lines, evidence.columns, evidence.values, strict=True):
        if value:  # padding, positions outside the window and empty slots add 0
            key = (int(line), int(column))
            found[key] = found.get(key, 0.0) + float(value)
    # session 0: item 1 at weight 1/2, item 2 (latest) at weight 1; log1p of each count
    expected = {
        (0, 3): 0.5 * np.log1p(2.0) + np.log1p(1.0),
        (0, 4): np.log1p(4.0),
        (1, 3): np.log1p(1.0),
        (1, 4): np.log1p(4.0),
    }
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, rel=1e-6)
    np.testing.assert_allclose(position_weights(mask, 2).numpy(), [[0.5, 1.0], [0.0, 1.0]])


def test_new_items_get_empty_rows_and_the_table_grows_with_the_model() -> None:
    shape = ModelShape(hidden_size=8, num_layers=1, num_heads=2, max_seq_len=4, covis_neighbours=3)
    model = SessionRecommender(shape, capacity=2)
    model.add_rows(2)
    add(model.covis_items, model.covis_weight, [(0, 1, 1.0)])
    model.add_rows(5)  # past capacity: the table doubles
    assert model.capacity >= 7 and model.covis_items.shape == (model.capacity, 3)
    assert model.covis_items[0].tolist() == [1, -1, -1]
    assert (model.covis_items[2:7] == -1).all() and (model.covis_weight[2:7] == 0).all()


@pytest.mark.parametrize("keep", [0.0, 0.5])
def test_relearning_a_window_forgets_what_the_rows_it_reaches_held(keep: float) -> None:
    shape = ModelShape(hidden_size=8, num_layers=1, num_heads=2, max_seq_len=4, covis_neighbours=3)
    model = SessionRecommender(shape, capacity=4)
    model.add_rows(4)
    add(model.covis_items, model.covis_weight, [(0, 1, 5.0), (2, 3, 2.0)])  # a->b, c->d
    since = [TrainingExample("e1", "s1", ("a",), "c", 1000)]  # a is now followed by c
    rule = CovisitationRule(window=1, decay=1.0, reverse=0.0)

    relearned = relearn_successors(model, ItemIndex("abcd"), since, rule, keep)
    assert relearned == 1
    expected = {2: 1.0, 1: 2.5} if keep else {2: 1.0}
    assert row_of(model.covis_items, model.covis_weight, 0) == expected
    assert row_of(model.covis_items, model.covis_weight, 2) == {3: 2.0}  # not reached


def test_the_settings_defaults_are_the_models() -> None:
    settings = ModelSettings()
    assert CovisitationRule.from_settings(settings) == CovisitationRule(WINDOW, DECAY, REVERSE)
    assert settings.covis_neighbours == COVIS_NEIGHBOURS
    assert ModelShape.from_settings(settings).covis_neighbours == COVIS_NEIGHBOURS


@pytest.mark.parametrize("neighbours", [1, 4])
def test_rows_never_hold_more_than_k_or_a_duplicate(neighbours: int) -> None:
    rng = np.random.default_rng(0)
    items, weights = table(20, neighbours)
    for _ in range(30):
        drawn = zip(rng.integers(0, 20, 16), rng.integers(0, 20, 16), rng.random(16), strict=True)
        pairs = [(int(s), int(t), float(a)) for s, t, a in drawn]
        add(items, weights, pairs, decay=0.95)
    for row in range(20):
        kept = [int(i) for i in items[row] if int(i) >= 0]
        assert len(kept) == len(set(kept)) <= neighbours
        values = weights[row][: len(kept)].tolist()
        assert values == sorted(values, reverse=True)
