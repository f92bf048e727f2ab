"""Self-tuning per shop: the knobs a shop's data needs, fitted on its own warm-up.

Nothing is chosen on an evaluated stream: every candidate is scored on the warm-up's own
validation split (its newest ``TrainSettings.validation_fraction``), as session-kNN's
grid is (``evaluation.tune_session_knn``). In order:

- **model size** (``TuneSettings.presets``): each preset is trained with ``train``; the
  best validation HR@20 wins (ties go to the earlier, smaller one);
- **epochs**: ``train``'s early stopping on the same split; when the best epoch is the
  cap itself (still improving: a small shop's few steps per epoch), the cap doubles, up
  to ``EPOCH_DOUBLINGS`` times, and the better run is kept (not with an explicit
  ``STREAMREC_TRAIN_EPOCHS`` or ``--epochs``);
- **the learner's row step and negatives** (``row_lrs`` x ``negatives``): the winning
  model's ``HeadLearner`` streams the validation split prequentially (score a micro-batch,
  then learn from it, as ``streamrec learn`` would) once per grid point; the best HR@20
  wins (ties: MRR@20, then the earlier point). A knob set explicitly is not searched.
  Until then the model's co-visitation table holds the training split only (the
  validation split's pairs would give away its targets); they are added at the end.

Bounded in time, each search by its own budget: the sizes by ``TuneSettings.budget_s``,
the learner grid by ``learner_budget_s`` counted from its start (its points cost seconds
where a size costs minutes: on a slow host the size search alone used to spend the one
budget and leave the learner at the defaults). No candidate starts once its budget is
spent (the first size and the first grid point always run); the report counts what was
skipped. Within the budgets the choice depends on the data alone, so a run is
deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from online_models.learner.micro_batch import HeadLearner
from online_models.model.covisitation import CovisitationRule
from online_models.model.covisitation_warmup import with_successors
from online_models.model.device import pick_device
from online_models.model.ranking_metrics import RankingTotals
from online_models.model.weights import ModelWeights
from online_models.offline.training import TrainResult, split_by_time, train
from streamrec.settings import (
    FITTED_LEARNER_FIELDS,
    FITTED_PREFIX,
    SIZE_FIELDS,
    LearnerSettings,
    ModelSettings,
    Settings,
    with_preset,
)
from streamrec.training_examples import TrainingExample

GPU_PRESETS = ("default", "large", "xl")
EPOCH_DOUBLINGS = 2


@dataclass(frozen=True, slots=True)
class Trial:
    """One candidate: what it set, how it did on the validation split, what it cost."""

    knob: str  # "size" | "learner"
    values: dict[str, Any]
    hr_at_20: float
    mrr_at_20: float
    seconds: float


@dataclass(slots=True)
class Tuning:
    """The fitted model and knobs, and every trial that led to them."""

    trained: TrainResult
    model: ModelSettings
    learner: LearnerSettings
    trials: list[Trial] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    budget_s: float = 0.0
    learner_budget_s: float = 0.0

    def fitted(self) -> dict[str, float]:
        """The learner knobs as a version's metadata carries them (``learner.<field>``)."""
        return {
            FITTED_PREFIX + name: float(getattr(self.learner, name))
            for name in FITTED_LEARNER_FIELDS
        }

    def report(self) -> dict[str, Any]:
        """JSON-ready: what was tried, what won, the time."""
        return {
            "chosen": {
                "preset": self.model.preset,
                "hidden_size": self.model.hidden_size,
                "num_layers": self.model.num_layers,
                "epochs": int(self.trained.metrics["epochs"]),
                "best_epoch": int(self.trained.metrics["best_epoch"]),
                "row_lr": self.learner.row_lr,
                "sampled_negatives": self.learner.sampled_negatives,
            },
            "trials": [
                {
                    "knob": t.knob,
                    **t.values,
                    "hr@20": t.hr_at_20,
                    "mrr@20": t.mrr_at_20,
                    "seconds": round(t.seconds, 2),
                }
                for t in self.trials
            ],
            "skipped": self.skipped,
            "seconds": round(self.seconds, 2),
            "budget_s": self.budget_s,
            "learner_budget_s": self.learner_budget_s,
        }


def fit_to_shop(
    settings: Settings, warm: Sequence[TrainingExample], *, progress: bool = False
) -> Tuning:
    """Train on ``warm`` and fit the size and the learner's knobs on its validation split."""
    started, tune = time.monotonic(), settings.tune
    trained, model, trials, skipped = _fit_size(settings, warm, started + tune.budget_s, progress)
    _, validation = split_by_time(list(warm), settings.train.validation_fraction)
    learner, learner_trials, learner_skipped = _fit_learner(
        settings, trained.weights, validation, time.monotonic() + tune.learner_budget_s
    )
    rule = CovisitationRule.from_settings(model)
    trained.weights = with_successors(trained.weights, validation, rule)  # as ``train`` does
    return Tuning(
        trained, model, learner, trials + learner_trials, skipped + learner_skipped,
        time.monotonic() - started, tune.budget_s, tune.learner_budget_s,
    )  # fmt: skip


def size_candidates(settings: Settings) -> list[ModelSettings]:
    """The sizes to try: ``TuneSettings.presets`` when listed; else, when training runs on
    CUDA, the GPU presets, unless a size was set explicitly (``STREAMREC_MODEL_PRESET``,
    ``..._HIDDEN_SIZE``...: it wins, as every explicit knob does); else the configured
    size alone."""
    names = settings.tune.presets
    explicit_size = settings.model.model_fields_set & {*SIZE_FIELDS, "preset"}
    if not names and not explicit_size and pick_device(settings.train.device).type == "cuda":
        names = GPU_PRESETS
    return [with_preset(settings.model, name) for name in names] or [settings.model]


def learner_candidates(settings: Settings) -> list[LearnerSettings]:
    """The grid of row steps and negatives; a knob set explicitly keeps its one value."""
    learner = settings.learner
    explicit = learner.model_fields_set
    row_lrs = [learner.row_lr] if "row_lr" in explicit else settings.tune.row_lrs
    negatives = (
        [learner.sampled_negatives] if "sampled_negatives" in explicit else settings.tune.negatives
    )
    return [
        learner.model_copy(update={"row_lr": row_lr, "sampled_negatives": n})
        for row_lr in row_lrs
        for n in negatives
    ]


def prequential_totals(
    weights: ModelWeights,
    model: ModelSettings,
    learner: LearnerSettings,
    examples: Sequence[TrainingExample],
) -> RankingTotals:
    """HR@20/MRR@20 of ``HeadLearner`` from ``weights`` over ``examples``, each micro-batch
    ranked before it is learned (what ``streamrec learn`` would score)."""
    covisitation = CovisitationRule.from_settings(model)
    head = HeadLearner.from_weights(weights, learner, pick_device(learner.device), covisitation)
    return head.learn_stream(examples)


def _fit_size(
    settings: Settings, warm: Sequence[TrainingExample], deadline: float, progress: bool
) -> tuple[TrainResult, ModelSettings, list[Trial], int]:
    candidates = size_candidates(settings)
    doublings = 0 if "epochs" in settings.train.model_fields_set else EPOCH_DOUBLINGS
    trials: list[Trial] = []
    best: tuple[TrainResult, ModelSettings] | None = None
    for position, model in enumerate(candidates):
        if best is not None and time.monotonic() >= deadline:
            return best[0], best[1], trials, len(candidates) - position
        train_settings = settings.train
        for doubling in range(doublings + 1):
            if doubling and time.monotonic() >= deadline:
                break
            began = time.monotonic()
            result = train(model, train_settings, warm, progress=progress, absorb_validation=False)
            hr, mrr, best_epoch = (result.metrics[k] for k in ("hr@20", "mrr@20", "best_epoch"))
            values = {
                "preset": model.preset, "epochs": train_settings.epochs,
                "best_epoch": int(best_epoch),
            }  # fmt: skip
            trials.append(Trial("size", values, hr, mrr, time.monotonic() - began))
            if best is None or hr > best[0].metrics["hr@20"]:
                best = (result, model)
            if best_epoch < train_settings.epochs:
                break
            train_settings = train_settings.model_copy(update={"epochs": 2 * train_settings.epochs})
    assert best is not None
    return best[0], best[1], trials, 0


def _fit_learner(
    settings: Settings,
    weights: ModelWeights,
    validation: Sequence[TrainingExample],
    deadline: float,
) -> tuple[LearnerSettings, list[Trial], int]:
    candidates = learner_candidates(settings)
    trials: list[Trial] = []
    best: tuple[tuple[float, float], LearnerSettings] | None = None
    for position, learner in enumerate(candidates):
        if best is not None and time.monotonic() >= deadline:
            return best[1], trials, len(candidates) - position
        began = time.monotonic()
        totals = prequential_totals(weights, settings.model, learner, validation)
        score = (totals.hit_rate, totals.mrr)
        values = {"row_lr": learner.row_lr, "sampled_negatives": learner.sampled_negatives}
        trials.append(Trial("learner", values, score[0], score[1], time.monotonic() - began))
        if best is None or score > best[0]:
            best = (score, learner)
    assert best is not None
    return best[1], trials, 0
