"""Each target's rank among all known items, as the learner's prequential metrics need it.

Two ways to the same numbers. ``exact_ranks`` scores every item in float32 and counts
(for known targets only: an unknown one misses whatever the scores, and on the sample a
quarter of the learner's targets are new items).
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

from online_models.model.ranking_metrics import CUTOFF, MISS_RANK, target_ranks
from online_models.model.recommender import SESSION_ITEM_LIFT, SessionRecommender

SCREEN_MARGIN = CUTOFF  # re-checked items beyond the cutoff: room for near-ties


def exact_ranks(
    model: SessionRecommender,
    sessions: torch.Tensor,
    rows: torch.Tensor,
    mask: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor,
) -> torch.Tensor:
    """float32 scores of every item (session items lifted), then the targets' ranks.

    ``known`` lists the lines whose target is a known item (row >= 0), taken from the
    caller's host copy of the targets: selecting them on the device would make the host
    wait for it (the selection's size is data).
    """
    ranks = torch.full_like(targets, MISS_RANK)
    if len(known):
        scores = model.scores(sessions[known], rows[known], mask[known], lift=True)
        ranks[known] = target_ranks(scores, targets[known])
    return ranks


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
    lifted, first = _session_scores(model, sessions, rows, present)
    lifted = lifted + covisitation.gather(1, rows.clamp(max=n - 1))
    at_target = present & (rows == targets[:, None])
    in_session = at_target.any(dim=1)
    target_column = targets.clamp(min=0)[:, None]
    plain = _exact_scores(sessions, table, bias, target_column)[:, 0]
    plain = plain + covisitation.gather(1, target_column)[:, 0]
    session_score = torch.where(at_target, lifted, torch.full_like(lifted, -torch.inf)).amax(1)
    target = torch.where(in_session, session_score, plain)
    count = (first & (lifted >= target[:, None])).sum(dim=1) + (~in_session).long()
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


def _session_scores(
    model: SessionRecommender, sessions: torch.Tensor, rows: torch.Tensor, present: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lifted float32 scores at each history position, and each item's first position.

    An item at several positions gets every position's bonus and lift, as in
    ``add_repeat_bonus``; ``first`` marks one position per distinct item.
    """
    n = model.n_items
    width = rows.shape[1]
    columns = rows.clamp(max=n - 1)
    scores = _exact_scores(sessions, model.item_table[:n], model.item_bias[:n], columns)
    same = (rows[:, :, None] == rows[:, None, :]) & present[:, None, :]
    bonus = (model.position_bonus(width) + SESSION_ITEM_LIFT).float()
    lifted = scores + (same.float() * bonus).sum(dim=2)
    earlier = torch.ones(width, width, dtype=torch.bool, device=rows.device).tril(-1)
    first = present & ~(same & earlier).any(dim=2)
    return lifted, first
