"""Training examples from recorded events, for offline training and evaluation.

Mirrors what the feature flow emits on ``training-examples`` (see
``streamrec.training_examples``): one example per click that has a history (predict the
clicked item from the session's earlier clicks) and one per purchase (a positive with
``purchase_weight``). Events must come in time order; repeated event ids are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from streamrec.events import Event
from streamrec.training_examples import TrainingExample

DEFAULT_PURCHASE_WEIGHT = 5.0


def examples_from_events(
    events: Iterable[Event],
    history_len: int,
    purchase_weight: float = DEFAULT_PURCHASE_WEIGHT,
) -> Iterator[TrainingExample]:
    """Examples in event order (sessions are kept in memory while the stream lasts)."""
    histories: dict[str, list[str]] = {}
    seen: set[str] = set()
    for event in events:
        if event.event_id in seen or event.type not in ("click", "purchase"):
            continue
        seen.add(event.event_id)
        history = histories.setdefault(event.session_id, [])
        if event.type == "click":
            if history:
                yield _example(event, history, "click", 1.0)
            history.append(event.item_id)
            del history[:-history_len]
        else:
            yield _example(event, history, "purchase", purchase_weight)


def _example(event: Event, history: list[str], kind: str, weight: float) -> TrainingExample:
    return TrainingExample(
        example_id=event.event_id,
        session_id=event.session_id,
        history=tuple(history),
        target_item=event.item_id,
        ts=event.ts,
        kind=kind,
        weight=weight,
        bought=True if kind == "purchase" else None,
        category=event.category,
    )


def split_by_time(
    examples: list[TrainingExample], validation_fraction: float
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """The oldest examples for training, the newest ``validation_fraction`` for validation."""
    ordered = sorted(examples, key=lambda example: example.ts)
    cut = max(1, int(len(ordered) * (1 - validation_fraction)))
    return ordered[:cut], ordered[cut:]
