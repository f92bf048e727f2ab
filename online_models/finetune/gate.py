"""The fine-tune gate: decide whether a fine-tuned candidate replaces the serving model.

The replay buffer is split in time: the candidate trains on the older part and both models
are judged on the most recent part, on examples neither had learned from when it ranked
them. The candidate never trained on the held-out part. The serving model's online
learner has (it learns every example right after ranking it), so scoring today's serving
weights on them would compare a model that has seen the answers with one that has not:
that is why fine-tunes used to lose. The serving side is therefore what the learner
ranked on those examples *before* learning them (its prequential hit@20, from its signal
stream: ``prequential_hit_rate``); only where the signals do not cover the held-out span
are the serving weights scored directly, which tilts the verdict towards keeping them.
The candidate's starting point must not have seen the answers either: it starts from the
version the learner ranked the first held-out batch with (``unseen_version``), not from
today's weights; where that version is unknown or gone it starts from the current
weights and the verdict says so (``base_fallback_note``), as that tilts it towards the
candidate. The candidate is promoted only when its HR@20 beats the serving model's by at
least ``margin`` on at least ``min_holdout`` examples. Pure: no model, Kafka or Redis here.

>>> judge_candidate(candidate_hr=0.6, serving_hr=0.4, holdout=100, margin=0.05, min_holdout=50)
GateVerdict(promoted=True, candidate_hr=0.6, serving_hr=0.4, margin=0.05, holdout=100, \
reason='candidate HR@20 0.6000 >= serving 0.4000 + margin 0.0500')
>>> batches = [LearnedBatch(100, 10, 2, 7), LearnedBatch(200, 10, 4, 7)]
>>> batches.append(LearnedBatch(300, 10, 9, 8))
>>> prequential_hit_rate(batches, first_ts_ms=150, last_ts_ms=250)
(0.4, 10)
>>> unseen_version(batches, first_ts_ms=150)
7
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from streamrec.training_examples import TrainingExample


@dataclass(frozen=True, slots=True)
class GateVerdict:
    promoted: bool
    candidate_hr: float
    serving_hr: float
    margin: float
    holdout: int
    reason: str


def split_replay(
    examples: Sequence[TrainingExample], holdout_fraction: float
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(train, holdout): the most recent ``holdout_fraction`` (by event time) is held out."""
    ordered = sorted(
        examples, key=lambda e: (e.ts, e.source_topic, e.source_partition, e.source_offset)
    )
    cut = len(ordered) - max(1, round(len(ordered) * holdout_fraction)) if ordered else 0
    return ordered[:cut], ordered[cut:]


class LearnedBatch(NamedTuple):
    """One learner micro-batch as its signal reports it: the newest example's event time,
    examples ranked, hits@20 (ranked before the learner stepped on them) and the version
    its head built on when it ranked them (which had not learned them)."""

    event_ts_ms: int
    examples: int
    hits: int
    model_version: int


def prequential_hit_rate(
    batches: Iterable[LearnedBatch], first_ts_ms: int, last_ts_ms: int
) -> tuple[float, int]:
    """(hit@20, examples) of the learner over the batches whose newest example falls in
    ``[first_ts_ms, last_ts_ms]`` (event time); ``(nan, 0)`` when none does."""
    hits = examples = 0
    for batch in batches:
        if first_ts_ms <= batch.event_ts_ms <= last_ts_ms:
            hits += batch.hits
            examples += batch.examples
    return (hits / examples if examples else float("nan")), examples


def unseen_version(batches: Sequence[LearnedBatch], first_ts_ms: int) -> int | None:
    """The version the candidate should start from: the one the learner built on when it
    ranked the first batch (``batches`` in the order it wrote them) with an example from
    ``first_ts_ms`` on. It had learned none of the held-out examples, and it is the newest
    that had not. None when no batch reaches ``first_ts_ms``."""
    return next((b.model_version for b in batches if b.event_ts_ms >= first_ts_ms), None)


# Why a candidate started from the current weights instead of the unseen version.
BASE_FALLBACKS = {
    "no_learner_signal": "no learner signal reaches the held-out span",
    "version_not_loadable": "version {unseen}, the newest that had not, no longer loads",
}


def base_fallback_note(reason: str, fallback: str, unseen: int | None) -> str:
    """The verdict's ``reason``, plus, when the candidate started from the current weights
    (``fallback``: a key of ``BASE_FALLBACKS``; ``""``: it did not), that the comparison
    favours the candidate and why."""
    if not fallback:
        return reason
    why = BASE_FALLBACKS[fallback].format(unseen=unseen)
    return (
        f"{reason}; candidate started from the current weights, which may have learned the "
        f"held-out examples: {why}"
    )


def judge_candidate(
    candidate_hr: float, serving_hr: float, holdout: int, margin: float, min_holdout: int
) -> GateVerdict:
    """Promote when the candidate's HR@20 >= the serving model's + ``margin``."""
    if holdout < min_holdout:
        return GateVerdict(
            False,
            candidate_hr,
            serving_hr,
            margin,
            holdout,
            f"only {holdout} held-out examples (< {min_holdout}): no trustworthy verdict",
        )
    if candidate_hr >= serving_hr + margin and candidate_hr > serving_hr:
        reason = (
            f"candidate HR@20 {candidate_hr:.4f} >= serving {serving_hr:.4f} + margin {margin:.4f}"
        )
        return GateVerdict(True, candidate_hr, serving_hr, margin, holdout, reason)
    reason = (
        f"candidate HR@20 {candidate_hr:.4f} does not beat serving {serving_hr:.4f} "
        f"by margin {margin:.4f}"
    )
    return GateVerdict(False, candidate_hr, serving_hr, margin, holdout, reason)
