"""Full training of the recommender (backbone and head) from recorded examples.

``train`` is the one training path: ``streamrec train`` and the drift-triggered fine-tune
both call it. It splits the examples by time (the newest ``validation_fraction`` is the
validation set, so validation is always "the future"), trains with full-softmax
cross-entropy over all known items, evaluates HR@20/MRR@20 after each epoch and stops
early after ``patience`` epochs without improvement, returning the best epoch's weights.

The recipe follows the model's size (docs/model.md, "Size recipe"): the preset's batch
size and dropout (``streamrec.settings``: ``TRAIN_RECIPES``, ``MODEL_PRESETS``), a rate
that falls with width (``peak_lr``), a linear warm-up then a cosine decay over the planned
steps (``lr_factor``), and residual-branch outputs scaled down with depth at
initialisation (``scale_residual_outputs``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from rich.progress import Progress

from online_models.model.covisitation import CovisitationRule
from online_models.model.covisitation_warmup import fit_blend, learn_successors
from online_models.model.device import pick_device, to_device
from online_models.model.item_index import ItemIndex
from online_models.model.prequential_ranks import exact_ranks
from online_models.model.ranking_metrics import RankingTotals, ranking_totals
from online_models.model.recommender import SessionRecommender, history_tensors
from online_models.model.weights import ModelShape, ModelWeights
from streamrec.settings import ModelSettings, TrainSettings, train_recipe
from streamrec.training_examples import TrainingExample

EVAL_BATCH = 1024


@dataclass(slots=True)
class TrainResult:
    """The best weights and how they did on the validation split."""

    weights: ModelWeights
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def train(
    model_settings: ModelSettings,
    train_settings: TrainSettings,
    examples: Sequence[TrainingExample],
    init_from: ModelWeights | None = None,
    *,
    progress: bool = False,
    absorb_validation: bool = True,
) -> TrainResult:
    """Fit backbone and head on ``examples`` (optionally starting from ``init_from``).

    The co-visitation table of a fresh model learns the training split, then
    (``absorb_validation``) the validation split too, so the learner starts from every
    example (one trained from ``init_from`` keeps its table as it is); a caller that still
    streams the validation split (self-tuning) keeps it out and adds it afterwards
    (``covisitation_warmup.with_successors``), else the table would already hold the
    targets it is scored on.

    The returned weights' ``version`` is ``init_from.version`` (0 without one): publishing
    assigns the new number. Items seen only in the validation split are not added. Runs
    on ``train_settings.device``; the weights come back as host arrays.
    """
    if not examples:
        raise ValueError("no training examples")
    train_settings = train_recipe(model_settings, train_settings)
    torch.manual_seed(train_settings.seed)
    rng = random.Random(train_settings.seed)
    run_on = pick_device(train_settings.device)
    train_set, validation = split_by_time(list(examples), train_settings.validation_fraction)
    model, index = _initial_model(model_settings, init_from, train_set)
    model.to(run_on)
    covisitation = CovisitationRule.from_settings(model_settings)
    # A model trained from ``init_from`` (a fine-tune of the online weights) already holds
    # the examples' pairs: the learner added them as they streamed; adding them again
    # would count them twice.
    fill_table = init_from is None
    if fill_table:
        learn_successors(model, index, train_set, covisitation)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=peak_lr(train_settings, model.shape.hidden_size),
        weight_decay=train_settings.weight_decay,
    )
    batch = train_settings.batch_size
    steps = math.ceil(len(train_set) / batch)
    if train_settings.max_steps_per_epoch:
        steps = min(steps, train_settings.max_steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(train_settings, steps * train_settings.epochs)
    )
    best: tuple[float, dict[str, torch.Tensor], int] | None = None
    history: list[dict[str, float]] = []
    order = list(range(len(train_set)))
    last = ""  # the previous epoch's figures, in the bar
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("train", total=steps * train_settings.epochs)
        for epoch in range(1, train_settings.epochs + 1):
            rng.shuffle(order)
            model.train()
            loss_sum = torch.zeros((), device=run_on)  # read once an epoch: no wait per step
            for step in range(steps):
                chunk = [train_set[i] for i in order[step * batch : (step + 1) * batch]]
                loss = _loss(model, index, chunk, run_on)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
                schedule.step()
                loss_sum += loss.detach()
                bar.update(task, advance=1, description=f"epoch {epoch}{last}")
            totals = evaluate_examples(model, index, validation, run_on)
            record = {
                "epoch": float(epoch),
                "loss": float(loss_sum) / max(steps, 1),
                "hr@20": totals.hit_rate,
                "mrr@20": totals.mrr,
                "lr": optimizer.param_groups[0]["lr"],
            }
            history.append(record)
            last = f" (epoch {epoch}: loss {record['loss']:.3f}, hr@20 {record['hr@20']:.3f})"
            if best is None or totals.hit_rate > best[0]:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = (totals.hit_rate, state, epoch)
            elif epoch - best[2] > train_settings.patience:
                break
    assert best is not None
    model.load_state_dict(best[1])
    model.eval()
    fit_blend(model, index, validation)  # then the table takes in the newest examples too
    if fill_table and absorb_validation:
        learn_successors(model, index, validation, covisitation)
    best_record = history[best[2] - 1]
    metrics = {
        "hr@20": best_record["hr@20"],
        "mrr@20": best_record["mrr@20"],
        "best_epoch": float(best[2]),
        "epochs_run": float(len(history)),
        "epochs": float(train_settings.epochs),
        "train_examples": float(len(train_set)),
        "validation_examples": float(len(validation)),
        "items": float(len(index)),
        "covis_blend": float(model.covis_blend.detach()),
    }
    version = init_from.version if init_from is not None else 0
    return TrainResult(model.cpu().to_weights(version, index.ids), metrics, history)


def peak_lr(settings: TrainSettings, hidden_size: int) -> float:
    """The rate after the warm-up: ``settings.lr`` at ``lr_reference_width``, divided by the
    square root of how much wider the model is (Adam's updates are per weight, while a
    wider layer sums more of them: the same rate moves its outputs further)."""
    return settings.lr * math.sqrt(settings.lr_reference_width / hidden_size)


def lr_factor(settings: TrainSettings, total_steps: int) -> Callable[[int], float]:
    """The share of the peak rate at each optimizer step: a linear warm-up over
    ``warmup_fraction`` of ``total_steps``, then a cosine decay to ``final_lr_fraction``
    at ``total_steps`` (an early stop ends the run partway down the curve)."""
    warmup = math.ceil(settings.warmup_fraction * total_steps)
    final = settings.final_lr_fraction

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * done))

    return factor


def scale_residual_outputs(model: SessionRecommender) -> None:
    """Scale each encoder layer's residual-branch output projections (attention output and
    feed-forward output) by 1 / sqrt(2 * layers), as GPT-2 does: at initialisation a
    deeper stack then adds no more to the residual stream than a shallow one."""
    scale = 1.0 / math.sqrt(2 * model.shape.num_layers)
    with torch.no_grad():
        for layer in model.backbone.encoder.layer:
            layer.attention.output.dense.weight.mul_(scale)
            layer.output.dense.weight.mul_(scale)


def split_by_time(
    examples: list[TrainingExample], validation_fraction: float
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """The oldest examples for training, the newest ``validation_fraction`` for validation."""
    ordered = sorted(examples, key=lambda example: example.ts)
    cut = max(1, int(len(ordered) * (1 - validation_fraction)))
    return ordered[:cut], ordered[cut:]


def _initial_model(
    settings: ModelSettings, init_from: ModelWeights | None, train_set: list[TrainingExample]
) -> tuple[SessionRecommender, ItemIndex]:
    if init_from is not None:
        model = SessionRecommender.from_weights(init_from, settings.initial_items, settings.dropout)
        index = ItemIndex(init_from.item_ids)
    else:
        shape = ModelShape.from_settings(settings)
        model = SessionRecommender(shape, settings.initial_items, settings.dropout)
        scale_residual_outputs(model)
        index = ItemIndex()
    new_ids = index.add_all(
        item for example in train_set for item in (*example.history, example.target_item)
    )
    vectors = None
    if settings.catalog_path is not None and new_ids:
        from online_models.model.text_cold_start import item_vectors_from_catalog

        vectors = item_vectors_from_catalog(settings, new_ids, model.shape.hidden_size)
    model.add_rows(len(new_ids), vectors)
    return model, index


def _loss(
    model: SessionRecommender,
    index: ItemIndex,
    examples: list[TrainingExample],
    device: torch.device,
) -> torch.Tensor:
    rows, mask = index.encode_histories([e.history for e in examples], model.shape.max_seq_len)
    batch = history_tensors(rows, mask, device)
    sessions = model.session_vectors(batch)
    targets = to_device(index.rows_of([e.target_item for e in examples]), device)
    weights = to_device(np.array([e.weight for e in examples], np.float32), device)
    logits = model.scores(sessions, batch.rows, batch.mask, lift=False)
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return (losses * weights).sum() / weights.sum()


def evaluate_examples(
    model: SessionRecommender,
    index: ItemIndex,
    examples: Sequence[TrainingExample],
    device: torch.device,
) -> RankingTotals:
    """HR@20/MRR@20 of ``model`` on ``examples`` (unknown targets count as misses)."""
    return ranking_totals(torch.from_numpy(rank_examples(model, index, examples, device)))


def rank_examples(
    model: SessionRecommender,
    index: ItemIndex,
    examples: Sequence[TrainingExample],
    device: torch.device,
) -> np.ndarray:
    """Each example's 0-based target rank among all items of ``model`` (no learning)."""
    model.eval()
    ranks: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(examples), EVAL_BATCH):
            chunk = examples[start : start + EVAL_BATCH]
            rows, mask = index.encode_histories([e.history for e in chunk], model.shape.max_seq_len)
            batch = history_tensors(rows, mask, device)
            sessions = model.session_vectors(batch)
            targets = index.rows_of([e.target_item for e in chunk])
            known = to_device(np.flatnonzero(targets >= 0), device)
            found = exact_ranks(
                model, sessions, batch.rows, batch.mask, to_device(targets, device), known
            )
            ranks.append(found.cpu().numpy())
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
