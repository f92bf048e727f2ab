"""The learner's signal: what one micro-batch did, on the ``learner_signals`` Redis stream.

The learner writes one entry per micro-batch (``LearnerSignal.fields``); the drift
monitor reads them as its quality signal and a fine-tune reads them back to judge its
candidate against what the learner scored on the same span (``LearnerSignal.from_fields``).
This is the only definition of the entry's fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class LearnerSignal:
    """The learner's prequential metrics for one micro-batch (evaluated before training)."""

    model_version: int  # the version the learner's head builds on
    examples: int  # examples ranked (exposure examples are not)
    hits_at_20: int
    mrr_sum: float
    mean_loss: float
    first_offset: int
    last_offset: int
    ts_ms: int  # when the step ran (wall clock)
    event_ts_ms: int | None = None  # the batch's newest example's event time
    new_items: int = 0
    skipped: str = ""  # the guard's reason when the step was not applied

    def fields(self) -> dict[str, int | float | str]:
        """The stream entry (an unknown event time is left out)."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    @classmethod
    def from_fields(cls, fields: Mapping[bytes | str, bytes | str]) -> LearnerSignal:
        """Parse a stream entry (older writers' field names too); raises ``ValueError`` on
        an entry it cannot read."""
        data = {_text(key): _text(value) for key, value in fields.items()}
        try:
            event_ts = data.get("event_ts_ms")
            return cls(
                model_version=int(data.get("model_version", data.get("version", "0"))),
                examples=int(data["examples"]),
                hits_at_20=int(float(data.get("hits_at_20", data.get("hits@20", "0")))),
                mrr_sum=float(data.get("mrr_sum", "0")),
                mean_loss=float(data.get("mean_loss", data.get("loss", "nan"))),
                first_offset=int(data.get("first_offset", "-1")),
                last_offset=int(data.get("last_offset", "-1")),
                ts_ms=int(float(data.get("ts_ms", data.get("ts", "0")))),
                event_ts_ms=None if event_ts is None else int(event_ts),
                new_items=int(data.get("new_items", "0")),
                skipped=data.get("skipped", ""),
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"not a learner signal: {data}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
