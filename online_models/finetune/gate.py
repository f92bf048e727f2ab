"""The fine-tune gate: decide whether a fine-tuned candidate replaces the serving model.

The replay buffer is split in time: the candidate trains on the older part and both models
are scored on the most recent part, which neither the fine-tune has trained on. (The serving
model's online learner may have seen those examples, so the comparison is, if anything,
tilted towards keeping the serving model.) The candidate is promoted only when its HR@20
beats the serving model's by at least ``margin`` on at least ``min_holdout`` examples.
Pure: no model, Kafka or Redis here.

>>> judge_candidate(candidate_hits=60, serving_hits=40, holdout=100, margin=0.05, min_holdout=50)
GateVerdict(promoted=True, candidate_hr=0.6, serving_hr=0.4, margin=0.05, holdout=100, \
reason='candidate HR@20 0.6000 >= serving 0.4000 + margin 0.0500')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def judge_candidate(
    candidate_hits: float, serving_hits: float, holdout: int, margin: float, min_holdout: int
) -> GateVerdict:
    """Promote when the candidate's HR@20 >= the serving model's + ``margin``."""
    if holdout < min_holdout:
        return GateVerdict(
            False,
            candidate_hits / holdout if holdout else 0.0,
            serving_hits / holdout if holdout else 0.0,
            margin,
            holdout,
            f"only {holdout} held-out examples (< {min_holdout}): no trustworthy verdict",
        )
    candidate_hr = candidate_hits / holdout
    serving_hr = serving_hits / holdout
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
