"""Training examples from applied events: what the learner sees for a click or a purchase.

``example_id`` is the event's ``event_id``: one example per event at most, so the same id
after a replay is a repeat a consumer can drop. ``source`` is where the event was read.
"""

from __future__ import annotations

from streamrec.events import Event
from streamrec.training_examples import TrainingExample


def click_example(
    event: Event,
    history: tuple[str, ...],
    already_bought: bool,
    topic: str,
    partition: int,
    offset: int,
) -> TrainingExample:
    """Predict the clicked item from the items before it (``history`` must not be empty).

    ``bought`` is True when the session had already bought the item, otherwise None: a
    later purchase is not known yet when the click is emitted.
    """
    return TrainingExample(
        example_id=event.event_id,
        session_id=event.session_id,
        history=history,
        target_item=event.item_id,
        ts=event.ts,
        kind="click",
        weight=1.0,
        bought=True if already_bought else None,
        category=event.category,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
    )


def purchase_example(
    event: Event,
    history: tuple[str, ...],
    weight: float,
    topic: str,
    partition: int,
    offset: int,
) -> TrainingExample:
    """A positive for the bought item, weighted, from the items clicked up to it."""
    return TrainingExample(
        example_id=event.event_id,
        session_id=event.session_id,
        history=history,
        target_item=event.item_id,
        ts=event.ts,
        kind="purchase",
        weight=weight,
        bought=True,
        category=event.category,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
    )
