"""The training-example contract: what ``flows/`` emits and ``online_models/`` learns from.

One example per click with a non-empty history (``kind="click"``: predict ``target_item``
from ``history``) and one per purchase (``kind="purchase"``, a positive with a larger
``weight``). ``source`` records the topic, partition and offset of the event that made
the example, so a learner or a fine-tune can say exactly what it has seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class TrainingExample:
    """A (session prefix -> next item) example."""

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


def encode_example(example: TrainingExample) -> bytes:
    """The bytes that go on the ``training-examples`` topic."""
    return orjson.dumps(
        {
            "example_id": example.example_id,
            "session_id": example.session_id,
            "history": list(example.history),
            "target_item": example.target_item,
            "ts": example.ts,
            "kind": example.kind,
            "weight": example.weight,
            "bought": example.bought,
            "category": example.category,
            "source": [example.source_topic, example.source_partition, example.source_offset],
        }
    )


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
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a training example: {exc}") from exc
