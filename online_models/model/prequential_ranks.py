"""Each target's rank among all known items, as the learner's prequential metrics need it.

Two ways to the same numbers. ``exact_ranks`` scores every item in float32 and counts
(for known targets only: an unknown one misses whatever the scores, and on the sample a
quarter of the learner's targets are new items). On CPU it scores a large catalog a block
of items at a time (``blocked_ranks``) instead of as one sessions x items matrix: a block
stays in cache while it is scored and counted, where the whole matrix (256 sessions x
100k items: 100 MB) goes out to memory and back, and the memory a step needs no longer
grows with the catalog.
``screened_ranks`` scores every item in a cheaper dtype (bfloat16: tensor cores on a GPU),
keeps the best ``cutoff + margin`` of each row, and re-checks those in float32 against
the target's float32 score. A cheap score is within a bound ``eps`` of the float32 one
(input rounding, output rounding: ``rank_error_bound``), so when the first item left out
scores below ``target - eps``, nothing outside the kept set can reach the target and the
re-checked count is the exact rank. Rows where that does not hold (and whose kept set
has not already put the target past the cutoff) come back as ``uncertain``, for the caller
to rank exactly. Session items are lifted for ranking (``SessionRecommender.add_repeat_bonus``)
and are always scored in float32 here, from the history itself. The co-visitation term
(``SessionRecommender.add_covisitation``, the same function every ranking uses) is added
in float32 to the exact scores and, rounded, to the cheap ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from online_models.model.covisitation import Evidence
from online_models.model.ranking_metrics import CUTOFF, MISS_RANK, target_ranks
from online_models.model.recommender import SESSION_ITEM_LIFT, SessionRecommender

SCREEN_MARGIN = CUTOFF  # re-checked items beyond the cutoff: room for near-ties
# The CPU ranking pass scores a catalog of at least ``BLOCKED_FROM_ITEMS`` items a block
# at a time, ``BLOCK_SCORES`` scores a block (1 MB of float32: scored, lifted and counted in
# cache; 1,024 items for 256 sessions). 256 sessions, one thread: 100k items 57-60 ms
# against 116-144 ms for the whole matrix, 400k 283 against 627 ms; 20k 34 against 25 ms
# (the own items scored apart, the entries sorted by block: a fixed cost), hence the floor.
BLOCKED_FROM_ITEMS = 32_768
BLOCK_SCORES = 262_144


def exact_ranks(
    model: SessionRecommender,
    sessions: torch.Tensor,
    rows: torch.Tensor,
    mask: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor,
    block_width: int | None = None,
) -> torch.Tensor:
    """float32 scores of every item (session items lifted), then the targets' ranks.

    ``known`` lists the lines whose target is a known item (row >= 0), taken from the
    caller's host copy of the targets: selecting them on the device would make the host
    wait for it (the selection's size is data). On CPU a large catalog is ranked
    ``block_width`` items at a time (``blocked_ranks``; by default from
    ``BLOCKED_FROM_ITEMS`` items); a GPU scores it in one product (a launch per block
    would cost more than it saves).
    """
    ranks = torch.full_like(targets, MISS_RANK)
    if not len(known):
        return ranks
    sessions, rows, mask, targets = sessions[known], rows[known], mask[known], targets[known]
    large = model.n_items >= BLOCKED_FROM_ITEMS
    if block_width is None and large and sessions.device.type == "cpu":
        block_width = max(BLOCK_SCORES // len(known), 1)
    if block_width is not None and block_width < model.n_items:
        ranks[known] = blocked_ranks(model, sessions, rows, mask, targets, block_width)
    else:
        ranks[known] = target_ranks(model.scores(sessions, rows, mask, lift=True), targets)
    return ranks


@torch.no_grad()
def blocked_ranks(
    model: SessionRecommender,
    sessions: torch.Tensor,
    rows: torch.Tensor,
    mask: torch.Tensor,
    targets: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """``target_ranks`` of the lifted scores of known ``targets``, ``width`` items a block.

    A line's own items (its history, lifted by ``SESSION_ITEM_LIFT``, and its target) are
    scored apart, in one product with the batch's distinct own items, and ranked among
    themselves from those scores. The catalog is then scored a block at a time, as the
    whole matrix's columns (the product plus the co-visitation term, the model's own
    entries sorted by block), each line's own items left out, and each line counts the
    items at least its target's score minus ``eps``: a bound on the float rounding between
    the two ways of scoring. Ties count against the target, as in ``target_ranks``, and so
    does an item within rounding of it (a constant model never looks good either way).
    """
    n = model.n_items
    batch, history = rows.shape
    table, bias = model.item_table[:n], model.item_bias[:n]
    own = torch.cat([rows, targets[:, None]], dim=1)  # B x (W + 1)
    columns = torch.unique(own)  # sorted
    evidence = model.covisitation_evidence(rows, mask)
    apart = torch.addmm(bias[columns], sessions, table[columns].T)
    apart += model.covisitation_at(rows, mask, columns, evidence)
    scored = apart.gather(1, torch.searchsorted(columns, own))
    target, others = _own_items(model, scored[:, :history], scored[:, history], rows, mask, targets)
    counts = others.float()
    term = model.covisitation_term(evidence)
    low = (target - _rounding_bound(model, sessions, target, evidence, term, history))[:, None]
    # what the blocks add: the co-visitation entries; -inf at each line's own items
    lines = torch.arange(batch, device=rows.device)[:, None].expand_as(own)
    left_out = torch.where(F.pad(mask > 0, (0, 1), value=True), -torch.inf, 0.0)
    entry_lines = torch.cat([evidence.lines, lines.flatten()])
    entry_columns = torch.cat([evidence.columns, own.flatten()])
    entry_values = torch.cat([term, left_out.flatten()])
    order = torch.argsort(torch.div(entry_columns, width, rounding_mode="floor"), stable=True)
    entry_lines, entry_columns, entry_values = (
        entry_lines[order], entry_columns[order], entry_values[order]
    )  # fmt: skip
    starts = torch.arange(0, n, width, device=rows.device)
    bounds = torch.searchsorted(entry_columns // width * width, starts).tolist() + [len(order)]
    scores = torch.empty(batch, width, device=rows.device)
    for number, start in enumerate(range(0, n, width)):
        stop = min(start + width, n)
        block = scores[:, : stop - start]
        torch.addmm(bias[start:stop], sessions, table[start:stop].T, out=block)
        first_entry, last_entry = bounds[number], bounds[number + 1]
        at = (entry_lines[first_entry:last_entry], entry_columns[first_entry:last_entry] - start)
        block.index_put_(at, entry_values[first_entry:last_entry], accumulate=True)
        counts += block.ge_(low).sum(dim=1)
    ranks = counts.long()
    inside = (ranks < CUTOFF) & target.isfinite()
    return torch.where(inside, ranks, torch.full_like(ranks, MISS_RANK))


def _rounding_bound(
    model: SessionRecommender,
    sessions: torch.Tensor,
    target: torch.Tensor,
    evidence: Evidence,
    term: torch.Tensor,
    history: int,
) -> torch.Tensor:
    """Per line, a bound on how far an item's score in a block and the target's score
    scored apart can each be from their exact values, times two.

    A dot product of length H, the bias, then at most ``history`` co-visitation entries
    (and, for the target, ``history`` lifts): each rounding moves a sum by at most ``u``
    (float32's unit roundoff) of the largest magnitude involved.
    """
    table, bias = model.item_table[: model.n_items], model.item_bias[: model.n_items]
    covisitation = torch.zeros_like(target).index_add_(0, evidence.lines, term.abs())
    largest = sessions.norm(dim=1) * table.norm(dim=1).amax() + bias.abs().amax()
    largest = largest + covisitation + target.abs().nan_to_num(0.0)
    roundings = sessions.shape[1] + 2 * history + 2
    return 4 * roundings * (torch.finfo(torch.float32).eps / 2) * largest


def screened_ranks(
    model: SessionRecommender,
    sessions: torch.Tensor,
    rows: torch.Tensor,
    mask: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks from a ``dtype`` pass plus a float32 re-check; and which rows were uncertain."""
    n = model.n_items
    known = targets >= 0
    if n == 0:
        return torch.full_like(targets, MISS_RANK), torch.zeros_like(known)
    table, bias = model.item_table[:n], model.item_bias[:n]
    covisitation = model.add_covisitation(sessions.new_zeros(len(sessions), n), rows, mask)
    present = mask > 0
    columns = torch.cat([rows.clamp(max=n - 1), targets.clamp(min=0)[:, None]], dim=1)
    plain = _exact_scores(sessions, table, bias, columns) + covisitation.gather(1, columns)
    width = rows.shape[1]
    target, others = _own_items(model, plain[:, :width], plain[:, width], rows, mask, targets)
    count = others + 1  # the target itself
    cheap = torch.addmm(bias.to(dtype), sessions.to(dtype), table.to(dtype).T)
    cheap += covisitation.to(dtype)
    kept = min(CUTOFF + SCREEN_MARGIN, n)
    top = torch.topk(cheap, min(kept + 1, n), dim=1)
    indices = top.indices[:, :kept]
    exact = _exact_scores(sessions, table, bias, indices) + covisitation.gather(1, indices)
    other = ~((indices[:, :, None] == rows[:, None, :]) & present[:, None, :]).any(dim=2)
    other &= indices != targets[:, None]  # the target itself is counted once, above
    count += (other & (exact >= target[:, None])).sum(dim=1)
    if kept < n:
        left_out = top.values[:, kept].float()
        eps = rank_error_bound(sessions, table, bias, dtype, covisitation.abs().amax(dim=1))
        certain = (left_out < target - eps) | (count > CUTOFF)
    else:
        certain = torch.ones_like(known)
    ranks = count - 1
    ranks = torch.where(known & (ranks < CUTOFF), ranks, torch.full_like(ranks, MISS_RANK))
    return ranks, known & ~certain


def rank_error_bound(
    sessions: torch.Tensor,
    table: torch.Tensor,
    bias: torch.Tensor,
    dtype: torch.dtype,
    covisitation: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Per session, a bound on |cheap score - float32 score| over every item.

    Rounding the inputs moves a dot product by at most ``2u |s| |t|`` (Cauchy-Schwarz), the
    bias by ``u |b|``, the co-visitation term (per session, at most ``covisitation``) by
    ``u`` of it, the output by ``u |score|``; ``u`` is the unit roundoff of ``dtype``.
    Four ``u`` over the largest magnitudes covers all of them with room for the accumulation.
    """
    unit = torch.finfo(dtype).eps / 2
    largest = sessions.norm(dim=1) * table.norm(dim=1).amax() + bias.abs().amax()
    largest = largest + torch.as_tensor(covisitation, device=largest.device).abs()
    return 4 * unit * largest + torch.finfo(torch.float32).eps * largest


def _exact_scores(
    sessions: torch.Tensor, table: torch.Tensor, bias: torch.Tensor, columns: torch.Tensor
) -> torch.Tensor:
    """float32 scores (B x K) of the items ``columns`` (B x K) for each session."""
    return torch.bmm(table[columns], sessions[:, :, None])[:, :, 0] + bias[columns]


def _own_items(
    model: SessionRecommender,
    history: torch.Tensor,
    target: torch.Tensor,
    rows: torch.Tensor,
    mask: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each line's target score, lifted when the target is one of its session's items, and
    how many of its other distinct session items score at least that.

    ``history`` (B x W) and ``target`` (B) are the scores before the lifts (product, bias,
    co-visitation) of each history position's item and of the target. An item at several
    positions gets every position's bonus and lift, as in ``add_repeat_bonus``.
    """
    present = mask > 0
    width = rows.shape[1]
    same = (rows[:, :, None] == rows[:, None, :]) & present[:, None, :]
    bonus = (model.position_bonus(width) + SESSION_ITEM_LIFT).float()
    lifted = history + (same.float() * bonus).sum(dim=2)
    at_target = present & (rows == targets[:, None])
    in_session = at_target.any(dim=1)
    session_score = torch.where(at_target, lifted, torch.full_like(lifted, -torch.inf)).amax(1)
    target = torch.where(in_session, session_score, target)
    earlier = torch.ones(width, width, dtype=torch.bool, device=rows.device).tril(-1)
    first = present & ~(same & earlier).any(dim=2) & ~at_target  # one position per item
    return target, (first & (lifted >= target[:, None])).sum(dim=1)
