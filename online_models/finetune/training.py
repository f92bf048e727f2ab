"""The model side of a fine-tune: train with ``streamrec train``'s code, score for the gate.

Training is ``online_models.offline.training.train`` started from the serving weights: one code
path for full training and drift fine-tunes. Scoring uses the same ``evaluate_examples``
(targets the model has never seen count as misses: a model that cannot recommend a new
item has not earned the credit).
"""

from __future__ import annotations

from collections.abc import Sequence

from online_models.model.device import pick_device
from online_models.model.item_index import ItemIndex
from online_models.model.recommender import SessionRecommender
from online_models.model.weights import ModelWeights
from online_models.offline.training import evaluate_examples, train
from streamrec.settings import Settings
from streamrec.training_examples import TrainingExample


def train_candidate(
    settings: Settings, base: ModelWeights, examples: Sequence[TrainingExample]
) -> ModelWeights:
    """Backbone and head trained from ``base`` on ``examples`` (best validation epoch)."""
    return train(settings.model, settings.train, examples, init_from=base).weights


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
