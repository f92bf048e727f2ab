"""One micro-batch of online learning: score first (prequential), then update the head.

Pure computation, no Kafka or Redis: the learner loop and the evaluation both drive it.
For each batch, every example is first ranked against all known items with the current
weights (HR@20 / MRR@20), then new items get rows, then ``steps_per_batch`` gradient steps
move the head only (the projection and the item rows that took part in the loss; the
repeat bonus is left to full training) while the backbone stays frozen. Exactly the rows
in the loss change, and the learner remembers them for the next delta.

Host and device split the work: the host does the bookkeeping on small arrays (ids to rows
in one lookup per batch, the histories' rows, the sampled candidates, which session items
to mask), the device does the dense math on tensors of a few fixed shapes. The host reads
from the device once per batch, at its end (the steps' guard figures and the ranks; the
guard decides on the device); host arrays go over with ``to_device``, which does not
wait for the device, and what a GPU computes keeps sizes the host knows
(``device.selects_freely``: CPU code may select by data, where that costs nothing).

Exposure feedback (``LearnerSettings.exposure_*_weight``, on when both are > 0): exposure
examples from the flow are encoded in the same pass as the ranked examples but not ranked.
A list with a click adds a softmax over the list itself: the item clicked from it against
the items it showed that were ignored (each counting ``exposure_negative_weight`` times as
much as the clicked one), weighted by ``exposure_positive_weight`` per list. A list with
no click has no item to prefer and adds nothing. (A logistic loss on every shown item,
label 0 when ignored, was tried first: on the dev stream it pushed down the model's own
best candidates and cost 0.11 to 0.20 HR@20; see docs/model.md.)

Co-visitation (``online_models/model/covisitation.py``): ranking adds the head's
co-visitation term, ``blend * evidence``, to every score; the steps' logits carry
it too, so ``blend`` is learned by the same loss (Adam, with the projection). After the
steps, the batch's examples update the table (last history items -> target), so the next
batch sees them; the rows that changed go into the next delta like any touched row.

Guards: a non-finite loss or gradient skips the step and the batch's later steps
(nothing changes, the outcome says why); gradients are clipped to ``grad_clip`` in total
norm.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from online_models.learner.prepared_batch import PreparedBatch, prepare_batch
from online_models.model.compiled_backbone import CompiledBackbone, backbone_runner
from online_models.model.covisitation import (
    CovisitationRule,
    Evidence,
    successor_pairs,
    update_covisitation,
)
from online_models.model.device import pick_device, selects_freely, to_device
from online_models.model.item_index import ItemIndex, last_known
from online_models.model.prequential_ranks import exact_ranks, screened_ranks
from online_models.model.ranking_metrics import RankingTotals, ranking_totals
from online_models.model.recommender import EncoderBatch, SessionRecommender, history_tensors
from online_models.model.weights import ModelWeights, WeightDelta
from streamrec.settings import LearnerSettings
from streamrec.training_examples import TrainingExample

NEW_ROW_SCALE = 0.5
# New rows start from the medians of at most this many existing rows, evenly spaced: the
# medians of 1M rows took 50 ms of every batch that brought a new item (4 ms at 100k)
MEDIAN_ROWS = 65_536
BLEND_EXAMPLES = 256  # explored examples per step whose blended loss moves the blend
RANK_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# a step's figures, in the order ``HeadLearner._step`` returns them
GUARD_LOSS, GUARD_NORM, GUARD_REPORTED, GUARD_APPLIED = range(4)
NOTHING_TO_LEARN = [0.0, 0.0, 0.0, 1.0]  # a step with no example left to learn from


@dataclass(slots=True)
class BatchOutcome:
    """What one micro-batch did (metrics are from before the step)."""

    ranking: RankingTotals
    ranks: np.ndarray  # per example, 0-based, before the step
    loss: float
    skipped: str  # "" when the step was applied, else the reason
    new_items: int
    step_s: float


@dataclass(slots=True)
class Histories:
    """A batch's history rows: host arrays for the bookkeeping, device tensors for the math."""

    rows: np.ndarray  # B x W, left-padded, W a bucket length
    mask: np.ndarray
    inputs: np.ndarray  # sorted distinct rows of the histories
    device_rows: EncoderBatch  # item rows, for the ranking pass
    device_inputs: torch.Tensor
    input_columns: EncoderBatch  # the same layout, positions in ``inputs`` instead of rows
    # the explored lines and their co-visitation evidence (``HeadLearner._evidence``)
    evidence: tuple[np.ndarray, Evidence] | None = None


@dataclass(frozen=True, slots=True)
class ShownLists:
    """The batch's clicked lists, flat: per shown item its history row, item row, list
    number and logit offset (log of its weight); per list its clicked item's position in
    the flat arrays and its weight."""

    rows: np.ndarray
    items: np.ndarray
    lists: np.ndarray
    offsets: np.ndarray
    clicked_at: np.ndarray
    weights: np.ndarray


_NONE = np.zeros(0, np.int64)
NO_LISTS = ShownLists(_NONE, _NONE, _NONE, _NONE.astype(np.float32), _NONE, _NONE)


@dataclass(slots=True)
class HeadForward:
    """A batch's session vectors and the history rows (``inputs``) they depend on."""

    inputs: torch.Tensor  # sorted unique item rows fed to the encoder
    input_rows: torch.Tensor  # their vectors, a leaf that collects input-side gradients
    sessions: torch.Tensor  # B x H query vectors, in the autograd graph


class CandidateCrossEntropy(torch.autograd.Function):
    """``cross_entropy(logits, labels, reduction="none")``, and the log-probabilities (a
    constant) with it.

    The same forward; the backward is one pass, the softmax minus the label times each
    example's gradient, where torch's goes through nll_loss's dense zeros and
    log_softmax's backward: about 0.8 ms less per step at B=256 on CPU.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = torch.log_softmax(logits, dim=1)
        ctx.save_for_backward(log_probs, labels)
        ctx.mark_non_differentiable(log_probs)
        return -log_probs.gather(1, labels[:, None])[:, 0], log_probs

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, losses: torch.Tensor, _: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        log_probs, labels = ctx.saved_tensors  # type: ignore[attr-defined]
        gradient = log_probs.exp().mul_(losses[:, None])
        gradient[torch.arange(len(labels), device=labels.device), labels] -= losses
        return gradient, None


def guard_verdict(steps: Sequence[Sequence[float]]) -> tuple[float, str]:
    """A batch's loss and, when a guard stopped a step, why: the first stopped step's
    loss and reason, else the last step's reported loss."""
    loss = 0.0
    for figures in steps:
        if not figures[GUARD_APPLIED]:
            value = figures[GUARD_LOSS]
            return value, "non_finite_loss" if not math.isfinite(value) else "non_finite_gradient"
        loss = figures[GUARD_REPORTED]
    return loss, ""


def rank_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype of the all-items ranking pass: ``auto`` is bfloat16 on CUDA, float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return RANK_DTYPES[name]


class HeadLearner:
    """Online state: model, item index, optimizers, and rows touched since ``base_version``."""

    def __init__(
        self,
        model: SessionRecommender,
        index: ItemIndex,
        settings: LearnerSettings,
        version: int,
        device: torch.device | None = None,
        seed: int = 0,
        covisitation: CovisitationRule = CovisitationRule(),
    ) -> None:
        self.device = device or pick_device(settings.device)
        self.model = model.to(self.device)
        self.model.backbone.eval().requires_grad_(False)
        self.model.backbone_call = backbone_runner(model.backbone, settings.compile, self.device)
        self.index = index
        self.settings = settings
        self.covisitation = covisitation
        self.dense_parameters = [*self.model.projection.parameters(), self.model.covis_blend]
        # fused: one kernel per tensor instead of a dozen (the same update, up to rounding)
        self.dense_optimizer = torch.optim.Adam(self.dense_parameters, lr=settings.lr, fused=True)
        # Negatives are host bookkeeping: the same stream of candidates on every device.
        self.generator = torch.Generator().manual_seed(seed)
        self.base_version = version
        self.base_items = len(index)
        self.touched = torch.zeros(self.model.capacity, dtype=torch.bool, device=self.device)
        self.amp = self.device.type == "cuda"
        self.rank_dtype = rank_dtype(settings.rank_dtype, self.device)
        negative, positive = settings.exposure_negative_weight, settings.exposure_positive_weight
        self.uses_exposures = negative > 0 and positive > 0
        # logit offsets by label (ignored, clicked): an ignored item counts ``negative`` times
        self.label_offsets = np.array([math.log(negative) if negative else 0.0, 0.0], np.float32)

    @property
    def encoder_compiled(self) -> bool:
        """Whether the encoder pass runs compiled (``compiled_backbone``): false when the
        setting or the host says eager, or a compile failed and the eager code took over."""
        call = self.model.backbone_call
        return isinstance(call, CompiledBackbone) and not call.failed

    @classmethod
    def from_weights(
        cls,
        weights: ModelWeights,
        settings: LearnerSettings,
        device: torch.device | None = None,
        covisitation: CovisitationRule = CovisitationRule(),
    ) -> HeadLearner:
        model = SessionRecommender.from_weights(weights)
        index = ItemIndex(weights.item_ids)
        return cls(model, index, settings, weights.version, device, covisitation=covisitation)

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def learn(self, batch: PreparedBatch | Sequence[TrainingExample]) -> BatchOutcome:
        """Score the batch with the current weights, then take the head steps on it.

        The first step reuses the scoring pass (one encoder forward per batch saved: with
        its backward, the encoder is about a quarter of a batch), so its histories leave
        out items that were new in this batch; later steps (``steps_per_batch`` > 1) encode
        them again with every item in.
        """
        started = time.perf_counter()
        if not isinstance(batch, PreparedBatch):
            batch = prepare_batch(batch, self.uses_exposures)
        if not self.uses_exposures and len(batch.pair_rows):
            none = batch.pair_rows[:0]
            batch = replace(batch, pair_rows=none, pair_slots=none, pair_labels=none)
        item_rows = self.index.rows_of(batch.item_ids)  # -1: new in this batch
        histories = self._histories(item_rows, batch.history_slots)
        forward = self._forward(histories)
        ranked = len(batch.target_slots)
        ranks = self._rank(
            forward.sessions[:ranked].detach(), histories, item_rows[batch.target_slots]
        )  # on the device: read with the guard's figures, after the steps are queued
        new = item_rows < 0
        histories_grow = bool(new[batch.history_slots[batch.history_slots >= 0]].any())
        new_ids = [batch.item_ids[slot] for slot in np.flatnonzero(new)]
        if new_ids:
            start = len(self.index)
            self.index.add_all(new_ids)
            item_rows[new] = np.arange(start, start + len(new_ids))
            self._add_items(len(new_ids), item_rows[batch.target_slots], forward.sessions)
        targets = item_rows[batch.target_slots]
        applied = torch.ones((), dtype=torch.bool, device=self.device)
        steps = []
        for number in range(self.settings.steps_per_batch):
            if number:
                if histories_grow:  # encoded again only when they hold a new item
                    histories = self._histories(item_rows, batch.history_slots)
                    histories_grow = False
                forward = self._forward(histories)
            lists = self._clicked_lists(batch, item_rows)
            step = self._step(forward, histories, targets, batch.weights, lists, applied)
            if step is not None:
                applied = step[GUARD_APPLIED] > 0
            steps.append(step)
        # the batch's one wait for the device: the guard's figures, then the ranks
        taken = [step for step in steps if step is not None]
        read = iter(torch.stack(taken).tolist() if taken else [])
        loss, skipped = guard_verdict(
            [NOTHING_TO_LEARN if s is None else next(read) for s in steps]
        )
        host_ranks = ranks.cpu().numpy()
        if not skipped:  # a skipped step changes nothing, the table included
            self._add_successors(histories, targets)
        return BatchOutcome(
            ranking_totals(torch.from_numpy(host_ranks)), host_ranks, loss, skipped,
            len(new_ids), time.perf_counter() - started,
        )  # fmt: skip

    def learn_stream(self, examples: Sequence[TrainingExample]) -> RankingTotals:
        """Learn ``examples`` in order, in micro-batches of ``batch_size``, each ranked
        before it is learned: the summed ranking is the prequential count the learner's
        signals would add up to."""
        totals = RankingTotals()
        size = self.settings.batch_size
        for start in range(0, len(examples), size):
            totals.add(self.learn(examples[start : start + size]).ranking)
        return totals

    def top_items(self, examples: Sequence[TrainingExample], k: int) -> list[tuple[str, ...]]:
        """The ``k`` items the current weights rank first after each example's history (the
        session's items lifted, as serving ranks): the list a shop would show. Used by the
        evaluation's simulated shop; exposure examples are left out."""
        batch = prepare_batch(examples, exposures=False)
        item_rows = self.index.rows_of(batch.item_ids)
        histories = self._histories(item_rows, batch.history_slots)
        rows, mask = histories.device_rows.rows, histories.device_rows.mask
        with torch.no_grad():
            sessions = self._forward(histories).sessions
            scores = self.model.scores(sessions, rows, mask, lift=True)
            top = scores.topk(min(k, scores.shape[1]), dim=1).indices.cpu().numpy()
        ids = self.index.ids
        return [tuple(ids[row] for row in line) for line in top]

    def _add_successors(self, histories: Histories, targets: np.ndarray) -> None:
        """The batch's (last history items -> target) pairs into the co-visitation table."""
        ranked = len(targets)
        rule = self.covisitation
        sources, successors, amounts = successor_pairs(
            histories.rows[:ranked], histories.mask[:ranked], targets, rule.window, rule.reverse
        )
        model = self.model
        changed = update_covisitation(
            model.covis_items, model.covis_weight, sources, successors, amounts, rule.decay
        )
        self.touched[changed] = True

    def _histories(self, item_rows: np.ndarray, slots: np.ndarray) -> Histories:
        """The last ``max_seq_len`` known rows of each history, on the host and the device."""
        rows = np.where(slots >= 0, item_rows[slots.clip(min=0)], -1)
        rows, mask = last_known(rows, self.model.shape.max_seq_len)
        device_rows = history_tensors(rows, mask, self.device)
        width = device_rows.rows.shape[1]
        rows, mask = rows[:, -width:], mask[:, -width:]
        inputs = np.unique(rows[mask > 0])
        columns = np.searchsorted(inputs, rows).clip(max=max(len(inputs) - 1, 0))
        input_columns = replace(device_rows, rows=to_device(columns, self.device))
        return Histories(
            rows, mask, inputs, device_rows, to_device(inputs, self.device), input_columns
        )

    def _rank(
        self, sessions: torch.Tensor, histories: Histories, targets: np.ndarray
    ) -> torch.Tensor:
        """Each target's rank before the step, on the device (unknown targets miss)."""
        target_rows = to_device(targets, self.device)
        ranked = len(targets)  # exposure rows follow the ranked ones and are not ranked
        rows, mask = histories.device_rows.rows[:ranked], histories.device_rows.mask[:ranked]
        if ranked == 0:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        with torch.no_grad():
            if self.rank_dtype == torch.float32:
                known = to_device(np.flatnonzero(targets >= 0), self.device)
                return exact_ranks(self.model, sessions, rows, mask, target_rows, known)
            ranks, uncertain = screened_ranks(
                self.model, sessions, rows, mask, target_rows, self.rank_dtype
            )
            # near-ties the cheap pass could not settle, scored in full with these weights
            # (before the steps change them): the one read the bfloat16 pass adds
            unsure = np.flatnonzero(uncertain.cpu().numpy())
            if len(unsure):
                pick = to_device(unsure, self.device)
                known = to_device(np.flatnonzero(targets[unsure] >= 0), self.device)
                ranks[pick] = exact_ranks(self.model, sessions[pick], rows[pick], mask[pick],
                                          target_rows[pick], known)  # fmt: skip
            return ranks

    def _forward(self, histories: Histories) -> HeadForward:
        """Session vectors, with the history rows they were encoded from as a leaf tensor.

        The rows get gradients as inputs of the frozen encoder, so a session made of new
        items, or of items whose meaning drifted, can learn a useful query vector: on the
        warm-up's own dev stream this took prequential HR@20 from 0.48 to 0.51.
        """
        inputs = histories.device_inputs
        input_rows = self.model.item_table.detach()[inputs].requires_grad_(True)
        with self._autocast():
            encoded = self.model.encode(histories.input_columns, table=input_rows)
        return HeadForward(inputs, input_rows, self.model.projection(encoded.float()))

    def _clicked_lists(self, batch: PreparedBatch, item_rows: np.ndarray) -> ShownLists:
        """The batch's lists that got a click, as flat arrays (empty when off)."""
        clicked = batch.pair_labels > 0
        if not clicked.any():
            return NO_LISTS
        keep = np.isin(batch.pair_rows, batch.pair_rows[clicked])
        rows, labels = batch.pair_rows[keep], batch.pair_labels[keep].astype(np.int64)
        heads, lists = np.unique(rows, return_inverse=True)
        weight = self.settings.exposure_positive_weight
        return ShownLists(
            rows,
            item_rows[batch.pair_slots[keep]],
            lists,
            self.label_offsets[labels],
            np.flatnonzero(labels)[np.unique(lists[labels > 0], return_index=True)[1]],
            np.full(len(heads), weight, np.float32),
        )

    def _step(
        self,
        forward: HeadForward,
        histories: Histories,
        targets: np.ndarray,
        weights: np.ndarray,
        shown: ShownLists,
        allowed: torch.Tensor,
    ) -> torch.Tensor | None:
        """One head step, guarded on the device; returns its figures (``GUARD_*``: the
        loss, the gradient norm, the next-click loss to report, the lists' when there is
        none, and 1 when applied), or None when there is nothing to learn.

        The guard: a non-finite loss or gradient, or ``allowed`` false (an earlier step
        of the batch was not applied), changes nothing. Adam is told through its
        ``found_inf`` (the mixed-precision scaler's way: the fused kernel skips the
        update, moments and step count included) and the rows get zero, so the host does
        not wait for the device to decide; ``learn`` reads the figures once per batch.

        Sampled softmax over the batch's targets and shared negatives, with the session's
        own items masked out, and only for examples whose target is not already in the
        session. Ranking puts the session's items first whatever their scores (see
        ``SessionRecommender.add_repeat_bonus``), so online steps are spent on what that
        leaves open, the next *other* item: on the warm-up's own dev stream this took
        HR@20 from 0.513 to 0.528 (full training keeps the complete next-click loss: a
        base model trained that way was the worse start, 0.507). Rows move by plain SGD
        on the sum of their input- and output-side gradients, which keeps each update in
        the direction of the sessions that asked for it (a row-wise Adam normalised every
        coordinate and did worse) and needs no optimizer state.

        Clicked lists add ``weight * cross-entropy`` of the clicked item over the list's
        items (their items join the candidates) to the sum; the sum is divided by the
        next-click examples' weight, so a list's weight is relative to one next-click
        example. The next-click logits carry the co-visitation term of the candidates
        (``blend`` learns here, by the same loss).
        """
        model = self.model
        ranked = len(targets)
        rows, present = histories.rows[:ranked], histories.mask[:ranked] > 0
        explore = np.flatnonzero(~(present & (rows == targets[:, None])).any(axis=1))
        if len(explore) == 0 and len(shown.rows) == 0:
            return None  # every target repeats a session item: nothing left to learn
        candidates = self._candidates(np.concatenate([targets, shown.items]))
        device_candidates = to_device(candidates, self.device)
        output_rows = model.item_table.detach()[device_candidates].requires_grad_(True)
        bias_rows = model.item_bias.detach()[device_candidates].requires_grad_(True)
        total = torch.zeros((), device=self.device)
        denominator = float(weights[explore].sum())
        if len(explore):
            columns = np.searchsorted(candidates, rows[explore]).clip(max=len(candidates) - 1)
            masked = present[explore] & (candidates[columns] == rows[explore])
            masked_at = np.nonzero(masked)
            labels = to_device(np.searchsorted(candidates, targets[explore]), self.device)
            chosen = to_device(explore, self.device)
            example_weights = to_device(weights[explore], self.device)
            logits = torch.addmm(bias_rows, forward.sessions[chosen], output_rows.T)
            with torch.no_grad():  # a masked logit's gradient is zero anyway: no backward copy
                at = tuple(to_device(a, self.device) for a in (masked_at[0], columns[masked_at]))
                logits[at] = -math.inf
            losses, log_probs = CandidateCrossEntropy.apply(logits, labels)
            total = (losses * example_weights).sum()
            # The blend learns from the blended scores, the head from its own: the rows keep
            # learning what co-visitation already explains (ranking adds both anyway).
            # (one scalar: the first ``BLEND_EXAMPLES`` say enough)
            some = slice(0, BLEND_EXAMPLES)
            blend_losses = self._blend_losses(
                histories, explore[some], device_candidates, log_probs[some], labels[some],
                losses[some].detach(),
            )  # fmt: skip
            share = float(weights[explore].sum()) / float(weights[explore[some]].sum() or 1.0)
            blend_loss = (blend_losses * example_weights[some]).sum() * share
        # The reported loss is the next-click part's: the drift monitor's loss signal
        # must not step when impressions start or stop flowing.
        next_click_loss = total.detach() / (denominator or 1.0)
        if len(explore):
            total = total + blend_loss
        if len(shown.rows):
            total = total + self._list_loss(forward.sessions, output_rows, bias_rows,
                                            candidates, shown)  # fmt: skip
            denominator = denominator or float(shown.weights.sum())
        loss = total / (denominator or 1.0)
        self.dense_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        rows_with_grad = [output_rows, bias_rows, forward.input_rows]
        norm = torch.nn.utils.clip_grad_norm_(
            [*self.dense_parameters, *rows_with_grad], self.settings.grad_clip
        )
        loss = loss.detach()
        applied = loss.isfinite() & norm.isfinite() & allowed
        self.dense_optimizer.found_inf = (~applied).float()  # type: ignore[attr-defined]
        self.dense_optimizer.step()
        step = -self.settings.row_lr
        with torch.no_grad():
            for tensor, index, leaf in (
                (model.item_table, device_candidates, output_rows),
                (model.item_bias, device_candidates, bias_rows),
                (model.item_table, forward.inputs, forward.input_rows),
            ):
                if leaf.grad is not None:
                    tensor.index_add_(0, index, torch.where(applied, leaf.grad, 0.0), alpha=step)
        self.touched[device_candidates] = True
        self.touched[forward.inputs] = True
        reported = next_click_loss if len(explore) else loss
        return torch.stack([loss, norm.float(), reported, applied.float()])

    def _blend_losses(
        self,
        histories: Histories,
        explore: np.ndarray,
        candidates: torch.Tensor,
        log_probs: torch.Tensor,
        labels: torch.Tensor,
        losses: torch.Tensor,
    ) -> torch.Tensor:
        """Each explored example's cross-entropy over the (sorted) candidates when its logits
        carry the co-visitation term (from the table as it was when the batch was ranked);
        only the blend gets a gradient (``log_probs`` and ``losses``, the head's own, are
        constants).

        The term is sparse, so is the computation: with ``p`` the head's probabilities,
        ``P`` their sum and ``t`` the term at the example's evidenced candidates, the
        blended loss is ``loss + log(1 - P + sum p exp(t)) - t[label]``, the same value as
        a log-softmax of the blended logits without any candidate-sized pass. The log is a
        log-sum-exp over ``log(1 - P)`` and each ``log p + t``, shifted by the line's
        largest: a long session's summed evidence times a fitted blend passes float32's
        ``exp`` range (88), where the plain sum was infinite and the guard skipped the step.
        """
        evidence = self._evidence(histories, explore)
        width = len(candidates)
        line = evidence.lines
        column = torch.searchsorted(candidates, evidence.columns).clamp(max=width - 1)
        # evidence for items outside the candidates counts nowhere: probability 0 (masked,
        # not dropped: a selection would make the host wait for a GPU)
        outside = candidates[column] != evidence.columns
        term = self.model.covisitation_term(evidence)
        log_p = log_probs.flatten()[line * width + column].masked_fill(outside, -math.inf)
        lines = torch.zeros(len(explore), device=self.device)
        unevidenced = (1 - lines.index_add(0, line, log_p.exp())).clamp(min=0).log()
        blended = log_p + term  # log(p exp(t)); -inf where a candidate is masked
        top = unevidenced.scatter_reduce(0, line, blended.detach(), "amax")
        total = (unevidenced - top).exp().index_add(0, line, (blended - top[line]).exp())
        at_label = lines.index_add(
            0, line, torch.where((column == labels[line]) & ~outside, term, 0.0)
        )
        return losses + top + total.log() - at_label

    def _evidence(self, histories: Histories, explore: np.ndarray) -> Evidence:
        """The explored lines' co-visitation evidence (``lines`` count in ``explore``),
        each (line, item) pair once with its values summed. Made once for both steps when
        the histories are not encoded again (the table changes only after the steps)."""
        if histories.evidence is None or not np.array_equal(histories.evidence[0], explore):
            lines = to_device(explore, self.device)
            rows, mask = histories.device_rows.rows[lines], histories.device_rows.mask[lines]
            found = self.model.covisitation_evidence(rows, mask)
            keys = found.lines * self.model.n_items + found.columns
            if selects_freely(self.device):
                at = found.values.nonzero()[:, 0]  # the entries that count (most are padding)
                pairs, pair = torch.unique(keys[at], return_inverse=True)
                values = torch.zeros(len(pairs), device=self.device)
                values.index_add_(0, pair, found.values[at])
            else:
                pairs, values = _summed_by_key(keys, found.values)
            span = self.model.n_items
            # an unused slot (key -1) names no candidate: column -1, outside any of them
            used = pairs >= 0
            lines = torch.where(used, pairs // span, 0)
            columns = torch.where(used, pairs % span, -1)
            histories.evidence = explore, Evidence(lines, columns, values)
        return histories.evidence[1]

    def _list_loss(
        self,
        sessions: torch.Tensor,
        output_rows: torch.Tensor,
        bias_rows: torch.Tensor,
        candidates: np.ndarray,
        shown: ShownLists,
    ) -> torch.Tensor:
        """Weighted sum over clicked lists of the clicked item's cross-entropy in its list."""
        at = to_device(np.searchsorted(candidates, shown.items), self.device)
        queries = sessions[to_device(shown.rows, self.device)]
        logits = (queries * output_rows[at]).sum(1) + bias_rows[at]
        logits = logits + to_device(shown.offsets, self.device)
        lists = to_device(shown.lists, self.device)
        count = len(shown.weights)
        top = torch.full((count,), -math.inf, device=self.device)
        top = top.scatter_reduce(0, lists, logits.detach(), "amax")
        sums = torch.zeros(count, device=self.device).index_add(
            0, lists, (logits - top[lists]).exp()
        )
        log_norm = sums.log() + top
        clicked = logits[to_device(shown.clicked_at, self.device)]
        return ((log_norm - clicked) * to_device(shown.weights, self.device)).sum()

    def _add_items(self, count: int, targets: np.ndarray, sessions: torch.Tensor) -> None:
        """Rows for new items: a new target starts in its session's direction.

        So the next session like the one that led to it already ranks it fairly well
        (one-shot), instead of waiting for many gradient steps from noise. The row gets
        half the median row norm (at full norm new items crowd out known ones: on the
        warm-up validation split, HR@20 0.507 at 0.5 vs 0.487 at 1.0 and 0.506 with no
        one-shot rows). Items only seen in histories start random; new biases start at
        the median bias. A target that is new and repeated in the batch takes the
        direction of its last session. Past twice ``MEDIAN_ROWS`` items, both medians are
        of evenly spaced rows (a starting value, not a statistic anything reports).
        """
        model = self.model
        start = model.n_items
        added = model.add_rows(count)
        self._grow_touched()
        self.touched[added.start : added.stop] = True
        if start == 0:
            return
        last = len(targets) - 1 - np.unique(targets[::-1], return_index=True)[1]
        last = last[targets[last] >= start]
        every = max(1, start // MEDIAN_ROWS)  # 1 (every row) up to 131,071 items
        with torch.no_grad():
            model.item_bias[added.start : added.stop] = model.item_bias[:start:every].median()
            if len(last):
                norm = model.item_table[:start:every].norm(dim=1).median()
                chosen = sessions.detach()[to_device(last, self.device)]
                directions = torch.nn.functional.normalize(chosen, dim=1)
                rows = to_device(targets[last], self.device)
                model.item_table[rows] = directions * norm * NEW_ROW_SCALE

    def _candidates(self, targets: np.ndarray) -> np.ndarray:
        """Sorted unique rows in the loss: the targets and shared random negatives."""
        n = self.model.n_items
        negatives = self.settings.sampled_negatives
        if negatives == 0 or negatives >= n:
            return np.arange(n)
        sampled = torch.randint(0, n, (negatives,), generator=self.generator).numpy()
        chosen = np.zeros(n, dtype=bool)  # a mask, not np.unique: a twentieth of its time
        chosen[targets] = chosen[sampled] = True
        return np.flatnonzero(chosen)

    def _grow_touched(self) -> None:
        extra = self.model.capacity - self.touched.shape[0]
        if extra > 0:
            pad = torch.zeros(extra, dtype=torch.bool, device=self.device)
            self.touched = torch.cat([self.touched, pad])

    def delta(self) -> WeightDelta:
        """Everything changed since ``base_version`` (version number assigned on publish)."""
        rows = self.touched[: self.model.n_items].nonzero().flatten().cpu().numpy()
        return WeightDelta(
            version=0,
            parent=self.base_version,
            start_row=self.base_items,
            new_item_ids=self.index.ids[self.base_items :],
            rows=rows.astype(np.int64),
            row_values=self.model.row_tensors(rows),
            dense=self.model.head_dense_tensors(),
        )

    def weights(self) -> ModelWeights:
        """A full copy of the current weights (``version`` is the last published one)."""
        return self.model.to_weights(self.base_version, self.index.ids)

    def mark_published(self, version: int) -> None:
        """The current state is now ``version``: later deltas are relative to it."""
        self.base_version = version
        self.base_items = len(self.index)
        self.touched.zero_()


def _summed_by_key(keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each distinct key once with its values summed, in a fixed shape: ``len(keys)``
    slots, the distinct keys first (sorted), then slots with key -1 and value 0. A sort and
    a running count instead of ``unique``, whose size the host would wait for on a GPU."""
    ordered, order = keys.sort()
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    group = starts.cumsum(0) - 1
    summed = torch.zeros_like(values).index_add_(0, group, values[order])
    distinct = torch.full_like(keys, -1).index_put_((group,), ordered)
    return distinct, summed
