"""Readers of recorded traffic: merge by time, deterministic ids, rejected lines counted."""

from __future__ import annotations

import gzip
from pathlib import Path

from streamrec.events import Event, RejectReason
from streamrec.recorded_events import LineRejection, read_recorded, read_yoochoose

CLICKS = """1,2014-04-07T10:51:09.277Z,214536502,0
2,2014-04-07T10:52:00.000Z,214662742,S
1,2014-04-07T10:54:09.868Z,214536500,0
2,not-a-time,214662742,0
3,2014-04-07T10:53:00.000Z,214662742
"""
BUYS = """1,2014-04-07T10:55:00.000Z,214536500,12462,1
2,2014-04-07T10:51:30.000Z,214662742,0,zero
"""


def write_dir(tmp_path: Path, gz: bool) -> Path:
    suffix = ".gz" if gz else ""
    for name, text in (("yoochoose-clicks.dat", CLICKS), ("yoochoose-buys.dat", BUYS)):
        path = tmp_path / f"{name}{suffix}"
        if gz:
            with gzip.open(path, "wt") as handle:
                handle.write(text)
        else:
            path.write_text(text)
    return tmp_path


def test_yoochoose_merges_files_by_time_and_rejects_bad_lines(tmp_path: Path) -> None:
    for gz in (False, True):
        (tmp_path / str(gz)).mkdir()
        directory = write_dir(tmp_path / str(gz), gz)
        records = list(read_yoochoose(directory))
        events = [r for r in records if isinstance(r, Event)]
        rejected = [r for r in records if isinstance(r, LineRejection)]
        assert [e.ts for e in events] == sorted(e.ts for e in events)
        assert [(e.type, e.session_id, e.item_id) for e in events] == [
            ("click", "1", "214536502"),
            ("click", "2", "214662742"),
            ("click", "1", "214536500"),
            ("purchase", "1", "214536500"),
        ]
        assert events[-1].price == 12462 and events[-1].quantity == 1
        assert events[1].category == "S"
        assert sorted(r.rejection.reason for r in rejected) == sorted(
            [RejectReason.INVALID_VALUE, RejectReason.MALFORMED_JSON, RejectReason.WRONG_TYPE]
        )


def test_event_ids_are_stable_across_reads_and_salt_changes_them(tmp_path: Path) -> None:
    directory = write_dir(tmp_path, gz=False)
    first = [r.event_id for r in read_yoochoose(directory) if isinstance(r, Event)]
    again = [r.event_id for r in read_yoochoose(directory) if isinstance(r, Event)]
    salted = [r.event_id for r in read_yoochoose(directory, salt="2") if isinstance(r, Event)]
    assert first == again
    assert len(set(first)) == len(first)
    assert not set(first) & set(salted)


def test_json_lines_source_is_read_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"event_id":"a","type":"click","session_id":"s","ts":1396321200000,"item_id":"i"}\n'
        "\n"
        '{"event_id":"b","type":"hover","session_id":"s","ts":1396321200000,"item_id":"i"}\n'
    )
    records = list(read_recorded(path))
    assert isinstance(records[0], Event) and records[0].event_id == "a"
    assert isinstance(records[1], LineRejection)
    assert records[1].rejection.reason is RejectReason.UNKNOWN_TYPE
    assert records[1].line_no == 3
