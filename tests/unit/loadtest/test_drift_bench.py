"""``bench drift``'s fine-tune starts where the job does: from the learner's weights as they
were when it ranked the first held-out batch, kept in memory per version."""

from __future__ import annotations

from loadtest.bench.drift import finetune_candidate
from online_models.finetune.gate import LearnedBatch, split_replay
from online_models.model.recommender import random_weights
from streamrec.settings import ModelSettings, Settings, TrainSettings
from streamrec.training_examples import TrainingExample

TINY = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "max_seq_len": 5}


def replay(count: int) -> list[TrainingExample]:
    """Examples over the items every model below knows (so none adds a row)."""
    return [
        TrainingExample(f"e{n}", f"s{n}", (f"item-{n % 20}",), f"item-{(n + 1) % 20}", 1000 + n)
        for n in range(count)
    ]


def test_the_candidate_starts_from_the_weights_that_ranked_the_first_held_out_batch() -> None:
    settings = Settings(model=ModelSettings(**TINY), train=TrainSettings(epochs=1))
    examples = replay(200)
    first_ts = split_replay(examples, settings.drift.finetune_holdout_fraction)[1][0].ts
    learned = [
        LearnedBatch(first_ts - 1, 64, 10, model_version=1),
        LearnedBatch(first_ts + 3, 64, 10, model_version=2),
        LearnedBatch(first_ts + 30, 64, 10, model_version=3),
    ]
    # Told apart by their item tables: the candidate keeps its starting point's rows.
    weights_at = {v: random_weights(20 + 10 * v, settings.model, seed=v) for v in (1, 2, 3)}
    serving = random_weights(70, settings.model, seed=9)

    candidate, verdict, unseen, fallback = finetune_candidate(
        settings, serving, examples, [], learned, weights_at
    )
    assert (unseen, fallback) == (2, "") and candidate.n_items == 40
    assert "current weights" not in verdict.reason

    candidate, verdict, unseen, fallback = finetune_candidate(
        settings, serving, examples, [], learned, {3: weights_at[3]}
    )
    assert (unseen, fallback) == (2, "version_not_loadable") and candidate.n_items == 70
    assert "version 2, the newest that had not, no longer loads" in verdict.reason
