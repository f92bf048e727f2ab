"""The model side of a fine-tune: train with ``streamrec train``'s code, judge for the gate.

Training is ``online_models.offline.training.train`` started from the serving weights: one code
path for full training and drift fine-tunes. It sees the recent window's training part plus
the reservoir of older examples at ``DriftSettings.finetune_reservoir_weight``
(``finetune.reservoir``). Scoring uses the same ``evaluate_examples`` (targets the model
has never seen count as misses: a model that cannot recommend a new item has not earned
the credit). ``judge`` puts the candidate against what the serving lineage ranked on the
held-out examples (``finetune.gate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from online_models.finetune.gate import (
    GateVerdict,
    LearnedBatch,
    judge_candidate,
    prequential_hit_rate,
)
from online_models.finetune.reservoir import weigh
from online_models.model.device import pick_device
from online_models.model.item_index import ItemIndex
from online_models.model.recommender import SessionRecommender
from online_models.model.weights import ModelWeights
from online_models.offline.training import evaluate_examples, train
from streamrec.settings import Settings
from streamrec.training_examples import TrainingExample


def train_candidate(
    settings: Settings,
    base: ModelWeights,
    examples: Sequence[TrainingExample],
    reservoir: Sequence[TrainingExample] = (),
) -> ModelWeights:
    """Backbone and head trained from ``base`` on ``examples`` and the down-weighted
    ``reservoir`` (best validation epoch; validation is the newest recent examples)."""
    weighted = weigh(reservoir, settings.drift.finetune_reservoir_weight)
    return train(settings.model, settings.train, [*weighted, *examples], init_from=base).weights


def judge(
    settings: Settings,
    candidate: ModelWeights,
    serving: ModelWeights,
    holdout: Sequence[TrainingExample],
    learned: Sequence[LearnedBatch],
) -> GateVerdict:
    """The gate's verdict on ``holdout``: the candidate's HR@20 against the serving
    lineage's prequential HR@20 over the same span (``learned``: the learner's batches),
    or, where the batches cover fewer than ``finetune_min_holdout`` examples, against the
    ``serving`` weights scored directly."""
    drift, device = settings.drift, settings.train.device
    margin, min_holdout = drift.finetune_margin, drift.finetune_min_holdout
    if not holdout:
        return judge_candidate(math.nan, math.nan, 0, margin, min_holdout)
    candidate_hr = hits_at_20(candidate, holdout, device) / len(holdout)
    serving_hr, covered = prequential_hit_rate(learned, holdout[0].ts, holdout[-1].ts)
    if covered < min_holdout:
        serving_hr = hits_at_20(serving, holdout, device) / len(holdout)
    return judge_candidate(candidate_hr, serving_hr, len(holdout), margin, min_holdout)


def hits_at_20(
    weights: ModelWeights, examples: Sequence[TrainingExample], device: str = "auto"
) -> int:
    """How many ``examples`` have their target among the model's top 20 items (on ``device``)."""
    if not examples:
        return 0
    run_on = pick_device(device)
    model = SessionRecommender.from_weights(weights).to(run_on)
    totals = evaluate_examples(model, ItemIndex(weights.item_ids), examples, run_on)
    return totals.hits
