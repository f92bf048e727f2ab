"""Readers for recorded traffic: the YooChoose challenge format, event JSON lines, and a
shop's own delimited log described by a mapping file (``delimited_log.py``).

All yield ``Event`` or ``LineRejection`` in event-time order, so replay, training and
evaluation read history the same way, whatever the source. Event ids are deterministic:
the same file read twice gives the same ids (a ``salt`` gives fresh ids, for benchmarks
that loop a file).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from streamrec.delimited_log import MAPPING_SUFFIXES, load_mapping, read_delimited
from streamrec.events import (
    Event,
    EventLimits,
    Rejection,
    RejectReason,
    iso_to_ms,
    parse_event,
    validate_event,
)
from streamrec.recorded_lines import LineRejection, Record, open_text, stable_event_id

CLICKS_FILE = "yoochoose-clicks.dat"
BUYS_FILE = "yoochoose-buys.dat"


SOURCE_HINT = (
    "set STREAMREC_DATA_DIR to the sample directory, or pass the path to the command "
    "(streamrec replay SOURCE, streamrec train --source SOURCE, streamrec loadtest SOURCE)"
)


class RecordedSourceMissing(FileNotFoundError):
    """Recorded traffic is not where a command looked; the message names the path and the fix."""


def require_recorded_source(source: Path) -> Path:
    """``source`` when it holds recorded traffic, else ``RecordedSourceMissing`` naming it.

    A source is a YooChoose directory (clicks and buys files, plain or gzip), an event
    JSON-lines file, or a delimited-log mapping (``.yaml``; its log must exist too).
    Commands call this before they start anything, so a wrong path ends in one sentence
    saying how to point streamrec at the data, not in a reader's traceback. A mapping that
    does not read raises ``MappingError`` saying what is wrong with it.
    """
    if source.is_dir():
        for stem in (CLICKS_FILE, BUYS_FILE):
            find_file(source, stem)
        return source
    if source.suffix in MAPPING_SUFFIXES and source.exists():
        log = load_mapping(source).path
        if not log.exists():
            raise RecordedSourceMissing(f"{source} names a log that is not there: {_shown(log)}")
        return source
    if source.exists():
        return source
    raise RecordedSourceMissing(f"no recorded events at {_shown(source)}: {SOURCE_HINT}")


def find_file(directory: Path, stem: str) -> Path:
    """``stem`` or ``stem.gz`` inside ``directory``."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise RecordedSourceMissing(
        f"neither {stem} nor {stem}.gz in {_shown(directory)}: {SOURCE_HINT}"
    )


def _shown(path: Path) -> str:
    """The path as given and, when relative, where it resolves from the working directory."""
    return str(path) if path.is_absolute() else f"{path} (= {path.resolve()})"


def _click_fields(parts: list[str]) -> dict[str, Any] | Rejection:
    session_id, ts, item_id, category = parts
    return {"session_id": session_id, "ts": ts, "item_id": item_id, "category": category or None}


def _buy_fields(parts: list[str]) -> dict[str, Any] | Rejection:
    session_id, ts, item_id, price, quantity = parts
    try:
        price_value, quantity_value = float(price), int(quantity)
    except ValueError:
        return Rejection(RejectReason.WRONG_TYPE, "price/quantity")
    return {
        "session_id": session_id,
        "ts": ts,
        "item_id": item_id,
        "price": price_value,
        "quantity": quantity_value,
    }


def _yoochoose_file(
    path: Path,
    kind: str,
    columns: int,
    to_fields: Callable[[list[str]], dict[str, Any] | Rejection],
    limits: EventLimits,
    salt: str,
) -> Iterator[tuple[int, Record]]:
    """One YooChoose CSV file as (ts, record) pairs; rejected lines carry ts 0."""
    with open_text(path) as lines:
        for line_no, line in enumerate(lines, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split(",")
            if len(parts) != columns:
                detail = f"expected {columns} columns"
                yield 0, _reject(path, line_no, RejectReason.MALFORMED_JSON, detail)
                continue
            fields = to_fields(parts)
            if isinstance(fields, Rejection):
                yield 0, LineRejection(path.name, line_no, fields)
                continue
            obj = {"event_id": stable_event_id(kind, line_no, line, salt), "type": kind} | fields
            record = _build(path, line_no, limits, obj)
            yield (record.ts if isinstance(record, Event) else 0), record


def _build(path: Path, line_no: int, limits: EventLimits, obj: dict) -> Record:
    try:
        obj["ts"] = iso_to_ms(obj["ts"])
    except ValueError:
        return _reject(path, line_no, RejectReason.INVALID_VALUE, f"timestamp {obj['ts']!r}")
    result = validate_event(obj, limits)
    if isinstance(result, Rejection):
        return LineRejection(path.name, line_no, result)
    return result


def _reject(path: Path, line_no: int, reason: RejectReason, detail: str) -> LineRejection:
    return LineRejection(path.name, line_no, Rejection(reason, detail))


def read_yoochoose(
    directory: Path, limits: EventLimits = EventLimits(), salt: str = ""
) -> Iterator[Record]:
    """Clicks and buys of a YooChoose directory merged by timestamp (gz or plain).

    Rejected lines are yielded where they are met (they carry no usable time).
    On equal timestamps clicks come before buys, as a shopper clicks before buying.
    """
    clicks = _yoochoose_file(
        find_file(directory, CLICKS_FILE), "click", 4, _click_fields, limits, salt
    )
    buys = _yoochoose_file(
        find_file(directory, BUYS_FILE), "purchase", 5, _buy_fields, limits, salt
    )
    for _, record in heapq.merge(clicks, buys, key=lambda pair: pair[0]):
        yield record


def read_event_lines(path: Path, limits: EventLimits = EventLimits()) -> Iterator[Record]:
    """Events from a JSON-lines file in the event contract, in file order."""
    with open_text(path) as lines:
        for line_no, line in enumerate(lines, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            result = parse_event(line.encode("utf-8", "surrogatepass"), limits)
            if isinstance(result, Rejection):
                yield LineRejection(path.name, line_no, result)
            else:
                yield result


def read_recorded(
    source: Path, limits: EventLimits = EventLimits(), salt: str = ""
) -> Iterator[Record]:
    """Any recorded source: a YooChoose directory, a delimited-log mapping, or an event
    JSON-lines file.

    A missing source raises ``RecordedSourceMissing`` here, before the first record is read.
    """
    require_recorded_source(source)
    if source.is_dir():
        return read_yoochoose(source, limits, salt)
    if source.suffix in MAPPING_SUFFIXES:
        return read_delimited(load_mapping(source), limits, salt)
    return read_event_lines(source, limits)


def only_events(records: Iterable[Record]) -> Iterator[Event]:
    """Drop the rejected lines."""
    for record in records:
        if isinstance(record, Event):
            yield record
