"""Exposure examples: a closed impression outcome as training signal for the learner.

The flow's shards join impressions with what their sessions did next
(``streamrec.exposure_outcomes.ExposureJoin``, the one definition of that join) and turn
each closed outcome into one ``kind="exposure"`` training example, on the same topic as
the next-click examples so it inherits their delivery: produced again after a crash,
dropped by ``example_id`` (``exposure:<request_id>``) where it was already read.

The example's history is the session's clicked items up to the impression's event time
(the shard reads it from the session's state when the outcome closes: a session is kept
far longer than the horizon; the evaluation's simulated shop passes the example's own).
The learner takes the clicked item as a positive and the ignored ones as weighted
negatives (``online_models/learner/micro_batch.py``).
"""

from __future__ import annotations

from streamrec.exposure_outcomes import ExposureOutcome
from streamrec.training_examples import EXPOSURE, TrainingExample

EXAMPLE_ID_PREFIX = "exposure:"


def exposure_example(
    outcome: ExposureOutcome,
    history: tuple[str, ...],
    topic: str,
    partition: int,
    offset: int,
) -> TrainingExample:
    """The example of one closed outcome, after ``history`` (the session before the list).

    ``target_item`` is the first shown item clicked ("" when none was), ``negatives`` the
    shown items not clicked, ``bought`` whether a shown item was bought. The source is the
    event that closed the outcome, so a replay emits the same example from the same place.
    """
    return TrainingExample(
        EXAMPLE_ID_PREFIX + outcome.request_id, outcome.session_id, history,
        outcome.clicked[0] if outcome.clicked else "", outcome.ts,
        EXPOSURE, 1.0, True if outcome.converted else None, None, topic, partition, offset,
        outcome.ignored,
    )  # fmt: skip
