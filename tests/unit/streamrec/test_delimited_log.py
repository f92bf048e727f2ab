"""A shop's own delimited log, read through a mapping: events in the contract, bad rows
counted with their reasons, event-time order, deterministic ids."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from streamrec.delimited_log import load_mapping
from streamrec.events import Event, RejectReason
from streamrec.recorded_events import (
    RecordedSourceMissing,
    read_recorded,
    require_recorded_source,
)
from streamrec.recorded_lines import LineRejection

# RetailRocket's layout: epoch milliseconds, a visitor for the session, typed events.
EPOCH_LOG = """timestamp,visitorid,event,itemid,transactionid
1433221332117,257597,view,355908,
1433221000000,257597,view,248676,
1433224214164,992329,addtocart,111016,
1433223236124,257597,transaction,355908,4000
not-a-time,5,view,7,
1433225000000,257597
"""
EPOCH_MAPPING = """format: delimited
path: events.csv
columns: {session_id: visitorid, item_id: itemid, type: event, ts: timestamp}
click_values: [view]
purchase_values: [transaction]
time: epoch_ms
"""
# Diginetica's layout: semicolons, a calendar day plus an offset in milliseconds.
DAY_LOG = """sessionId;userId;itemId;timeframe;eventdate
1;NA;81766;526309;2016-05-09
1;NA;31331;1031018;2016-05-09
2;NA;32118;243569;2016-05-09
"""
DAY_MAPPING = """format: delimited
path: views.csv.gz
delimiter: ";"
columns: {session_id: sessionId, item_id: itemId}
time: date_offset
date_column: eventdate
offset_column: timeframe
"""


def source(tmp_path: Path, mapping: str, log_name: str, log: str) -> Path:
    if log_name.endswith(".gz"):
        (tmp_path / log_name).write_bytes(gzip.compress(log.encode()))
    else:
        (tmp_path / log_name).write_text(log)
    (tmp_path / "shop.yaml").write_text(mapping)
    return require_recorded_source(tmp_path / "shop.yaml")


def test_typed_epoch_rows_become_events_in_time_order_and_bad_rows_say_why(
    tmp_path: Path,
) -> None:
    records = list(read_recorded(source(tmp_path, EPOCH_MAPPING, "events.csv", EPOCH_LOG)))
    events = [r for r in records if isinstance(r, Event)]
    rejected = {r.line_no: r.rejection.reason for r in records if isinstance(r, LineRejection)}
    assert [(e.type, e.item_id, e.ts) for e in events] == [
        ("click", "248676", 1433221000000),
        ("click", "355908", 1433221332117),
        ("purchase", "355908", 1433223236124),
    ]
    assert {e.session_id for e in events} == {"257597"}
    assert rejected == {
        4: RejectReason.UNKNOWN_TYPE,  # addtocart: neither a click nor a purchase value
        6: RejectReason.INVALID_VALUE,  # the time does not read
        7: RejectReason.MALFORMED_JSON,  # too few columns
    }
    again = [r.event_id for r in read_recorded(tmp_path / "shop.yaml") if isinstance(r, Event)]
    assert again == [e.event_id for e in events] and len(set(again)) == 3


def test_a_day_plus_offset_layout_in_gzip(tmp_path: Path) -> None:
    records = list(read_recorded(source(tmp_path, DAY_MAPPING, "views.csv.gz", DAY_LOG)))
    assert all(isinstance(r, Event) for r in records)
    day_ms = 1462752000000  # 2016-05-09T00:00:00Z
    assert [(r.session_id, r.ts - day_ms) for r in records] == [
        ("2", 243569), ("1", 526309), ("1", 1031018)
    ]  # fmt: skip
    assert {r.type for r in records} == {"click"}


def test_a_mapping_says_what_is_wrong_with_it(tmp_path: Path) -> None:
    (tmp_path / "shop.yaml").write_text("format: delimited\npath: x.csv\ncolumns: {item_id: a}\n")
    with pytest.raises(ValueError, match="session_id"):
        load_mapping(tmp_path / "shop.yaml")
    (tmp_path / "shop.yaml").write_text(EPOCH_MAPPING.replace("epoch_ms", "fortnights"))
    with pytest.raises(ValueError, match="time"):
        load_mapping(tmp_path / "shop.yaml")
    (tmp_path / "shop.yaml").write_text(EPOCH_MAPPING)
    with pytest.raises(RecordedSourceMissing, match="events.csv"):
        require_recorded_source(tmp_path / "shop.yaml")
    (tmp_path / "events.csv").write_text("when,who,what\n1,2,3\n")
    with pytest.raises(ValueError, match="no column 'visitorid'"):
        list(read_recorded(tmp_path / "shop.yaml"))
