"""The gate judges the candidate as the learner works: each held-out batch ranked, then
learned; and what it would promote has learned the held-out span."""

from __future__ import annotations

from online_models.finetune.gate import LearnedBatch
from online_models.finetune.training import judge, learn_through
from online_models.model.recommender import random_weights
from online_models.model.weights import ITEM_TABLE
from streamrec.settings import DriftSettings, LearnerSettings, ModelSettings, Settings
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
