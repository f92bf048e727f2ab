"""A shop's own click log, in any delimited layout, described by a small mapping file.

The mapping is a YAML file (the recorded source commands take, ``--source shop.yaml``)::

    format: delimited
    path: events.csv           # the log, relative to this file; .gz is read as well
    delimiter: ","             # one character ("\\t" for tabs)
    header: true               # the first line names the columns (false: columns are 0, 1, ...)
    columns:
      session_id: visitorid    # required
      item_id: itemid          # required
      type: event              # optional; without it every row is a click
      ts: timestamp            # required, unless time is date_offset
      user_id: userid          # optional, like category, price and quantity
    click_values: [view]       # values of the type column that are clicks ...
    purchase_values: [transaction]  # ... and purchases; other values are skipped, counted
    time: epoch_ms             # epoch_ms | epoch_s | iso | date_offset
    date_column: eventdate     # date_offset: a calendar day (YYYY-MM-DD, UTC) ...
    offset_column: timeframe   # ... plus this offset, in offset_unit (ms | s)

Every row becomes an event in the contract (``streamrec.events``) and is validated like
any other; a row that cannot be read is a ``LineRejection`` with its reason (too few
columns, an unreadable time, another event type, a field the contract refuses). Event ids
are deterministic (the row's position and content). The log is read whole and yielded in
event-time order (ties keep the file's order), as the other readers yield theirs.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streamrec.events import Event, EventLimits, Rejection, RejectReason, validate_event
from streamrec.recorded_lines import LineRejection, open_text, stable_event_id

OPTIONAL_FIELDS = ("user_id", "category", "price", "quantity")
MAPPING_SUFFIXES = (".yaml", ".yml")


class MappingError(ValueError):
    """A mapping that does not describe its log (the message says what is wrong)."""


class DelimitedMapping(BaseModel):
    """Where each field of an event is in the log's rows (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["delimited"]
    path: Path
    delimiter: str = Field(",", min_length=1, max_length=1)
    header: bool = True
    columns: dict[str, str | int]
    click_values: list[str] = Field(default_factory=lambda: ["click"])
    purchase_values: list[str] = Field(default_factory=lambda: ["purchase", "buy"])
    time: Literal["epoch_ms", "epoch_s", "iso", "date_offset"] = "epoch_ms"
    date_column: str | int | None = None
    offset_column: str | int | None = None
    offset_unit: Literal["ms", "s"] = "ms"

    @model_validator(mode="after")
    def _complete(self) -> DelimitedMapping:
        known = {"session_id", "item_id", "type", "ts", *OPTIONAL_FIELDS}
        unknown = set(self.columns) - known
        if unknown:
            raise ValueError(f"unknown event fields {sorted(unknown)}; known: {sorted(known)}")
        needed = ["session_id", "item_id"] + ([] if self.time == "date_offset" else ["ts"])
        missing = [name for name in needed if name not in self.columns]
        if missing:
            raise ValueError(f"columns must name {missing}")
        if self.time == "date_offset" and (self.date_column is None or self.offset_column is None):
            raise ValueError("time: date_offset needs date_column and offset_column")
        return self


def load_mapping(path: Path) -> DelimitedMapping:
    """The mapping in ``path``, its log's path made absolute; ``MappingError`` says what is
    wrong with it."""
    try:
        data = yaml.safe_load(path.read_text())
        mapping = DelimitedMapping.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise MappingError(f"{path}: not a delimited-log mapping: {exc}") from exc
    return mapping.model_copy(update={"path": path.parent / mapping.path})


def read_delimited(
    mapping: DelimitedMapping, limits: EventLimits = EventLimits(), salt: str = ""
) -> Iterator[Event | LineRejection]:
    """The log's events in event-time order; rejected rows first, where they were met."""
    name = mapping.path.name
    events: list[tuple[int, int, Event]] = []
    with open_text(mapping.path) as lines:
        rows = csv.reader(lines, delimiter=mapping.delimiter)
        position = _Columns(mapping, next(rows, []) if mapping.header else None)
        first = 2 if mapping.header else 1
        for line_no, row in enumerate(rows, first):
            if not row or row == [""]:
                continue
            obj = position.event_fields(row)
            if isinstance(obj, Rejection):
                yield LineRejection(name, line_no, obj)
                continue
            obj["event_id"] = stable_event_id(name, line_no, mapping.delimiter.join(row), salt)
            result = validate_event(obj, limits)
            if isinstance(result, Rejection):
                yield LineRejection(name, line_no, result)
            else:
                events.append((result.ts, line_no, result))
    events.sort(key=lambda entry: (entry[0], entry[1]))
    for _, _, event in events:
        yield event


class _Columns:
    """Column positions of the mapping's fields, from the header (or the numbers given)."""

    def __init__(self, mapping: DelimitedMapping, header: list[str] | None) -> None:
        self.mapping = mapping
        self.width = 0
        names = {name.strip(): index for index, name in enumerate(header or [])}

        def position(column: str | int) -> int:
            if isinstance(column, int) or header is None:
                return int(column)
            if column not in names:
                raise MappingError(f"{mapping.path}: no column {column!r} in {sorted(names)}")
            return names[column]

        self.fields = {field: position(column) for field, column in mapping.columns.items()}
        self.date = position(mapping.date_column) if mapping.date_column is not None else None
        self.offset = position(mapping.offset_column) if mapping.offset_column is not None else None
        used = [*self.fields.values(), self.date or 0, self.offset or 0]
        self.width = max(used) + 1
        self.kinds = {value: "click" for value in mapping.click_values} | {
            value: "purchase" for value in mapping.purchase_values
        }

    def event_fields(self, row: list[str]) -> dict[str, Any] | Rejection:
        """The row as an event's JSON fields (without its id), or why it cannot be one."""
        if len(row) < self.width:
            return Rejection(RejectReason.MALFORMED_JSON, f"{len(row)} columns, need {self.width}")
        fields = self.fields
        kind = "click"
        if "type" in fields:
            value = row[fields["type"]].strip()
            if value not in self.kinds:
                return Rejection(RejectReason.UNKNOWN_TYPE, repr(value)[:80])
            kind = self.kinds[value]
        ts = self._ts(row)
        if isinstance(ts, Rejection):
            return ts
        obj: dict[str, Any] = {
            "type": kind,
            "session_id": row[fields["session_id"]].strip(),
            "item_id": row[fields["item_id"]].strip(),
            "ts": ts,
        }
        for name in OPTIONAL_FIELDS:
            if name in fields and (value := row[fields[name]].strip()):
                obj[name] = _number(name, value) if name in ("price", "quantity") else value
        return obj

    def _ts(self, row: list[str]) -> int | Rejection:
        mapping = self.mapping
        try:
            if mapping.time == "date_offset":
                assert self.date is not None and self.offset is not None
                day = datetime.strptime(row[self.date].strip(), "%Y-%m-%d").replace(tzinfo=UTC)
                offset = float(row[self.offset])
                scale = 1000 if mapping.offset_unit == "s" else 1
                return int(day.timestamp() * 1000 + offset * scale)
            value = row[self.fields["ts"]].strip()
            if mapping.time == "iso":
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=UTC)
                return int(parsed.timestamp() * 1000)
            scale = 1000 if mapping.time == "epoch_s" else 1
            return int(float(value) * scale)
        except ValueError:
            return Rejection(RejectReason.INVALID_VALUE, f"unreadable time in {row[:6]!r}"[:120])


def _number(name: str, value: str) -> float | int | str:
    """A price or quantity as a number (left as text when it is not one: the contract
    then refuses it with its reason)."""
    try:
        return int(value) if name == "quantity" else float(value)
    except ValueError:
        return value
