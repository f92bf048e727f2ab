"""The training-example contract: what ``flows/`` emits and ``online_models/`` learns from.

One example per click with a non-empty history (``kind="click"``: predict ``target_item``
from ``history``) and one per purchase (``kind="purchase"``, a positive with a larger
``weight``). ``source`` records the topic, partition and offset of the event that made
the example, so a learner or a fine-tune can say exactly what it has seen.

A third kind, ``kind="exposure"``, is what a list shown to the session led to (one closed
``streamrec.exposure_outcomes.ExposureOutcome``): ``history`` is the session before the
list, ``target_item`` the shown item it clicked ("" when none) and ``negatives`` the shown
items it ignored. It is not a next-click example: consumers that learn or measure next
clicks skip it (``is_next_click``); the online learner turns it into weighted positives and
negatives.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson


class TrainingExample(NamedTuple):
    """A (session prefix -> next item) example.

    A NamedTuple (immutable, typed) rather than a frozen dataclass: the flow builds one per
    click, and a NamedTuple costs a fraction as much to build.
    """

    example_id: str
    session_id: str
    history: tuple[str, ...]
    target_item: str
    ts: int
    kind: str = "click"
    weight: float = 1.0
    bought: bool | None = None
    category: str | None = None
    source_topic: str = ""
    source_partition: int = -1
    source_offset: int = -1
    negatives: tuple[str, ...] = ()


EXPOSURE = "exposure"


def is_next_click(example: TrainingExample) -> bool:
    """A click or purchase example (history -> next item), not an exposure outcome."""
    return example.kind != EXPOSURE


def encode_example(example: TrainingExample) -> bytes:
    """The bytes that go on the ``training-examples`` topic."""
    (
        example_id,
        session_id,
        history,
        target_item,
        ts,
        kind,
        weight,
        bought,
        category,
        source_topic,
        source_partition,
        source_offset,
        negatives,
    ) = example
    data: dict[str, Any] = {
        "example_id": example_id,
        "session_id": session_id,
        "history": history,
        "target_item": target_item,
        "ts": ts,
        "kind": kind,
        "weight": weight,
        "bought": bought,
        "category": category,
        "source": (source_topic, source_partition, source_offset),
    }
    if negatives:
        data["negatives"] = negatives
    return orjson.dumps(data)


def decode_example(raw: bytes) -> TrainingExample:
    """Inverse of ``encode_example``; raises ``ValueError`` on bytes it did not make."""
    try:
        data: dict[str, Any] = orjson.loads(raw)
        topic, partition, offset = data["source"]
        return TrainingExample(
            example_id=data["example_id"],
            session_id=data["session_id"],
            history=tuple(data["history"]),
            target_item=data["target_item"],
            ts=int(data["ts"]),
            kind=data["kind"],
            weight=float(data["weight"]),
            bought=data["bought"],
            category=data["category"],
            source_topic=topic,
            source_partition=int(partition),
            source_offset=int(offset),
            negatives=tuple(data.get("negatives", ())),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a training example: {exc}") from exc
