"""The gate judges the candidate as the learner works: each held-out batch ranked, then
learned; and what it would promote has learned the held-out span."""

from __future__ import annotations

import logging

import pytest

from online_models.finetune.gate import LearnedBatch
from online_models.finetune.training import judge, learn_through, train_candidate
from online_models.model.covisitation import CovisitationRule
from online_models.model.covisitation_warmup import with_successors
from online_models.model.recommender import SessionRecommender, random_weights
from online_models.model.weights import ITEM_TABLE, ModelWeights
from streamrec.settings import (
    DriftSettings,
    LearnerSettings,
    ModelSettings,
    Settings,
    TrainSettings,
)
from streamrec.training_examples import TrainingExample

TINY = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "max_seq_len": 5}


def settings() -> Settings:
    return Settings(model=ModelSettings(**TINY), drift=DriftSettings(finetune_min_holdout=10))


def examples(count: int, new_targets: bool) -> list[TrainingExample]:
    """Sessions over the 20 known items; each target is a new item when ``new_targets``."""
    return [
        TrainingExample(
            f"e{n}",
            f"s{n}",
            (f"item-{n % 20}",),
            f"new-{n}" if new_targets else f"item-{(n + 1) % 20}",
            1000 + n,
        )  # fmt: skip
        for n in range(count)
    ]


def test_targets_never_seen_before_miss_although_the_carried_weights_learn_them() -> None:
    config = settings()
    learner = LearnerSettings(batch_size=16)
    held_out = examples(40, new_targets=True)
    carried, hits, ranked = learn_through(
        config, random_weights(20, config.model, seed=1), held_out, learner
    )
    assert (hits, ranked) == (0, 40)  # ranked before the batch that brought each item
    assert {e.target_item for e in held_out} <= set(carried.item_ids)


def test_judge_scores_the_candidate_prequentially_and_returns_it_carried() -> None:
    config = settings()
    learner = LearnerSettings(batch_size=16)
    held_out = examples(40, new_targets=False)
    candidate = random_weights(20, config.model, seed=2)
    _, hits, ranked = learn_through(config, candidate, held_out, learner)
    serving_batches = [LearnedBatch(held_out[-1].ts, 40, 0, model_version=1)]

    verdict, carried = judge(config, candidate, candidate, held_out, serving_batches, learner)
    assert verdict.candidate_hr == hits / ranked and verdict.serving_hr == 0.0
    assert verdict.promoted == (hits > 0)
    changed = carried.tensors[ITEM_TABLE] - candidate.tensors[ITEM_TABLE]
    assert float(abs(changed).sum()) > 0  # it learned the held-out span


def successors_of(weights: ModelWeights, item: str) -> set[str]:
    model = SessionRecommender.from_weights(weights)
    row = weights.item_ids.index(item)
    return {weights.item_ids[int(i)] for i in model.covis_items[row] if int(i) >= 0}


@pytest.mark.parametrize("keep", [0.0, 1.0])
def test_the_candidate_relearns_the_rows_the_recent_window_reaches(
    keep: float, caplog: pytest.LogCaptureFixture
) -> None:
    config = Settings(
        model=ModelSettings(**TINY),
        train=TrainSettings(epochs=1),
        drift=DriftSettings(finetune_successor_keep=keep),
    )
    stale = [TrainingExample(f"o{n}", f"o{n}", ("item-0",), "item-7", n) for n in range(30)]
    rule = CovisitationRule.from_settings(config.model)
    base = with_successors(random_weights(20, config.model, seed=3), stale, rule)
    recent = [
        TrainingExample(f"e{n}", f"s{n}", (f"item-{n % 2 * 2}",), f"item-{n % 2 * 2 + 1}", 100 + n)
        for n in range(60)
    ]  # item-0 -> item-1 and item-2 -> item-3 since the change

    with caplog.at_level(logging.INFO, logger="streamrec.finetune"):
        candidate = train_candidate(config, base, recent)
    assert successors_of(candidate, "item-0") == ({"item-1"} if keep < 1 else {"item-7"})
    assert successors_of(candidate, "item-7") == {"item-0"}  # a row the window does not reach
    logged = [r for r in caplog.records if r.getMessage() == "finetune_successors_relearned"]
    # items 0-3, as sources and (reverse pairs) as targets
    assert [r.fields["rows"] for r in logged] == ([4] if keep < 1 else [])  # type: ignore[attr-defined]
