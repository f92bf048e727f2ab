"""The alerts the online learner raises, built with ``make_alert`` like every other (pure).

- ``guard_alert``: a micro-batch was skipped by a guard (non-finite loss or gradient);
- ``unloadable_alert``: the registry's current version does not load, and the learner
  continues from an older version of its lineage;
- ``topic_reset_alert``: a partition of ``training-examples`` was emptied under the learner
  (the flow raises the same alert for its input topics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from streamrec.alerts import Alert, StreamOffset, make_alert
from streamrec.training_examples import TrainingExample

GUARD_DETECTOR = "learner_guard"
UNLOADABLE_DETECTOR = "model_version_unloadable"
TOPIC_RESET_DETECTOR = "topic_reset"
ALERT_OFFSETS = 10  # source offsets an alert carries: enough to read the batch back


def guard_alert(
    reason: str, examples: Sequence[TrainingExample], examples_seen: int, model_version: int
) -> Alert:
    """The alert for a micro-batch a guard skipped (``reason``: non-finite loss/gradient)."""
    return make_alert(
        GUARD_DETECTOR, reason, math.nan, math.nan, examples_seen, model_version,
        message=f"skipped a micro-batch of {len(examples)} examples: {reason}",
        offsets=tuple(
            StreamOffset(e.source_topic, e.source_partition, e.source_offset)
            for e in examples[:ALERT_OFFSETS]
        ),
    )  # fmt: skip


def unloadable_alert(
    broken: int, continued_from: int | None, reason: str, examples_seen: int
) -> Alert:
    """The alert for a current version ``broken`` that does not load.

    ``continued_from`` is the version whose weights the learner goes on with (None: it
    keeps the weights it has, those of its own last publication and what it learned since).
    """
    instead = "its own weights" if continued_from is None else f"v{continued_from}"
    return make_alert(
        UNLOADABLE_DETECTOR, "model_version", float(broken),
        math.nan if continued_from is None else float(continued_from), examples_seen,
        continued_from, message=f"v{broken} does not load ({reason}); continuing from {instead}",
    )  # fmt: skip


def topic_reset_alert(
    topic: str, partition: int, offset: int, end: int, examples_seen: int, model_version: int
) -> Alert:
    """The alert for a partition found emptied: the learner was at ``offset``, it ends at
    ``end``; the examples between were lost with the broker's data."""
    return make_alert(
        TOPIC_RESET_DETECTOR, "offset", float(offset), float(end), examples_seen, model_version,
        message=f"{topic}[{partition}] ends at {end}, before the learner's offset {offset}: "
        "reading it again from its beginning",
        offsets=(StreamOffset(topic, partition, end),),
    )  # fmt: skip
