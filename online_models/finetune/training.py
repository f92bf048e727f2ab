"""The model side of a fine-tune: train with ``streamrec train``'s code, judge for the gate.

Training is ``online_models.offline.training.train`` started from a version of the serving
lineage (the one that had not learned the held-out examples: ``gate.unseen_version``): one
code path for full training and drift fine-tunes. It sees the recent window's training
part plus the reservoir of older examples at ``DriftSettings.finetune_reservoir_weight``
(``finetune.reservoir``).

``judge`` runs the candidate through the held-out examples as the online learner does
(``learn_through``: each micro-batch ranked, then learned) and puts its prequential HR@20
against what the serving lineage ranked on the same examples (``finetune.gate``). Both
sides start the span without its answers and learn as they go, and the candidate that wins
has learned the span too: that is the version promoted, so a promotion does not drop the
newest examples, the ones that matter most after a change.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from online_models.finetune.gate import (
    GateVerdict,
    LearnedBatch,
    judge_candidate,
    prequential_hit_rate,
)
from online_models.finetune.reservoir import weigh
from online_models.learner.micro_batch import HeadLearner
from online_models.model.covisitation import CovisitationRule
from online_models.model.covisitation_warmup import relearn_successors
from online_models.model.device import pick_device
from online_models.model.item_index import ItemIndex
from online_models.model.recommender import SessionRecommender
from online_models.model.weights import ModelWeights
from online_models.offline.training import evaluate_examples, train
from streamrec.settings import LearnerSettings, Settings
from streamrec.structured_log import log_event
from streamrec.training_examples import TrainingExample

logger = logging.getLogger("streamrec.finetune")


def train_candidate(
    settings: Settings,
    base: ModelWeights,
    examples: Sequence[TrainingExample],
    reservoir: Sequence[TrainingExample] = (),
) -> ModelWeights:
    """Backbone and head trained from ``base`` on ``examples`` and the down-weighted
    ``reservoir`` (best validation epoch; validation is the newest recent examples)."""
    drift = settings.drift
    if drift.finetune_successor_keep < 1:
        base = relearned(base, examples, settings, drift.finetune_successor_keep)
    weighted = weigh(reservoir, drift.finetune_reservoir_weight)
    return train(settings.model, settings.train, [*weighted, *examples], init_from=base).weights


def relearned(
    weights: ModelWeights, examples: Sequence[TrainingExample], settings: Settings, keep: float
) -> ModelWeights:
    """``weights`` whose co-visitation rows reached by ``examples`` keep ``keep`` of their
    counts and learn ``examples`` again (``covisitation_warmup.relearn_successors``)."""
    model = SessionRecommender.from_weights(weights)
    rule = CovisitationRule.from_settings(settings.model)
    rows = relearn_successors(model, ItemIndex(weights.item_ids), examples, rule, keep)
    log_event(logger, "finetune_successors_relearned", rows=rows, of=weights.n_items, keep=keep)
    return model.to_weights(weights.version, weights.item_ids)


def judge(
    settings: Settings,
    candidate: ModelWeights,
    serving: ModelWeights,
    holdout: Sequence[TrainingExample],
    learned: Sequence[LearnedBatch],
    learner: LearnerSettings,
) -> tuple[GateVerdict, ModelWeights]:
    """The gate's verdict on ``holdout`` and the candidate carried through it (what a
    promotion publishes). The candidate's prequential HR@20 under the online learner
    (``learner``: the serving lineage's settings) against the serving lineage's over the
    same span (``learned``: the learner's batches), or, where the batches cover fewer than
    ``finetune_min_holdout`` examples, against the ``serving`` weights scored directly
    (they learned the answers: the verdict then tilts towards keeping them)."""
    drift = settings.drift
    margin, min_holdout = drift.finetune_margin, drift.finetune_min_holdout
    if not holdout:
        return judge_candidate(math.nan, math.nan, 0, margin, min_holdout), candidate
    device = settings.train.device
    carried, hits, ranked = learn_through(settings, candidate, holdout, learner)
    candidate_hr = hits / ranked if ranked else math.nan
    serving_hr, covered = prequential_hit_rate(learned, holdout[0].ts, holdout[-1].ts)
    if covered < min_holdout:
        serving_hr = hits_at_20(serving, holdout, device) / len(holdout)
    verdict = judge_candidate(candidate_hr, serving_hr, len(holdout), margin, min_holdout)
    return verdict, carried


def learn_through(
    settings: Settings,
    weights: ModelWeights,
    examples: Sequence[TrainingExample],
    learner: LearnerSettings,
) -> tuple[ModelWeights, int, int]:
    """``weights`` after the online learner's micro-batches over ``examples`` (in order, on
    ``TrainSettings.device``), with the hits@20 and the examples it ranked before learning
    each batch: the same prequential count as the learner's signals."""
    covisitation = CovisitationRule.from_settings(settings.model)
    device = pick_device(settings.train.device)
    head = HeadLearner.from_weights(weights, learner, device, covisitation)
    totals = head.learn_stream(examples)
    return head.weights(), totals.hits, totals.examples


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
