"""The experiments report: outcomes per arm, intervals, comparisons, explored slots."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from cli.app import app
from loadtest.experiment_report import (
    OutcomeTally,
    SlotTally,
    experiment_report,
    join_events,
    report_tables,
    tally_outcomes,
)
from streamrec.events import Event, encode_event
from streamrec.exposure_outcomes import ArmTally
from streamrec.proportions import two_proportion_z_test, wilson_interval

HORIZON_MS = 60_000
T = 1_700_000_000_000


def shown(
    rid: str,
    session: str,
    ts: int,
    items: tuple[str, ...],
    arm: str,
    explored: tuple[int, ...] = (),
) -> Event:
    return Event(
        rid, "impression", session, ts, request_id=rid, items=items, model_version=3,
        arm=arm, explored=explored,
    )  # fmt: skip


def click(eid: str, session: str, ts: int, item: str) -> Event:
    return Event(eid, "click", session, ts, item_id=item)


def buy(eid: str, session: str, ts: int, item: str) -> Event:
    return Event(eid, "purchase", session, ts, item_id=item)


EVENTS = [
    shown("r1", "s1", T + 1000, ("a", "b", "x"), "online", explored=(2,)),
    click("c1", "s1", T + 2000, "x"),  # clicked the explored slot: a hit, a click
    buy("p1", "s1", T + 3000, "x"),
    shown("r2", "s2", T + 1000, ("a", "b"), "online"),
    click("c2", "s2", T + 5000, "z"),  # next click off the list: no hit, no click
    shown("r3", "s3", T + 1000, ("a", "b"), "online"),  # nothing follows
    shown("r4", "s4", T + 1000, ("c", "d"), "popularity"),
    click("c4", "s4", T + 1500, "d"),
    click("c4", "s4", T + 1500, "d"),  # a duplicate delivery counts once
    shown("r5", "s5", T + 1000, ("c", "d"), "popularity"),
    click("c5", "s5", T + 1000 + HORIZON_MS + 1, "c"),  # after the horizon: does not count
]


def test_outcomes_are_joined_once_in_event_time_order() -> None:
    outcomes = join_events(reversed(EVENTS), HORIZON_MS)
    by_id = {outcome.request_id: outcome for outcome in outcomes}
    assert sorted(by_id) == ["r1", "r2", "r3", "r4", "r5"]
    assert by_id["r1"].clicked == ("x",) and by_id["r1"].purchased == ("x",)
    assert by_id["r2"].next_click == "z" and not by_id["r2"].was_clicked
    assert by_id["r4"].clicked == ("d",)
    assert not by_id["r5"].was_clicked


def test_each_arm_is_counted_and_compared_with_the_control() -> None:
    tally = tally_outcomes(join_events(EVENTS, HORIZON_MS))
    assert tally.arms["online"] == ArmTally(
        impressions=3, clicked=1, followed=2, hits=1, converted=1
    )
    assert tally.arms["popularity"] == ArmTally(impressions=2, clicked=1, followed=1, hits=1)
    assert tally.slots == SlotTally(explored_shown=1, explored_clicked=1, model_shown=2)
    assert OutcomeTally.from_dict(tally.as_dict()) == tally
    report = experiment_report(tally, control="online")
    online, popularity = report["arms"]
    assert (online["arm"], popularity["arm"]) == ("online", "popularity")
    assert online["ctr"]["rate"] == pytest.approx(1 / 3)
    assert (online["ctr"]["low"], online["ctr"]["high"]) == pytest.approx(wilson_interval(1, 3))
    assert online["served_hr"]["trials"] == 2 and online["served_hr"]["rate"] == 0.5
    assert online["vs_control"] is None
    versus = popularity["vs_control"]["ctr"]
    assert versus["difference"] == pytest.approx(0.5 - 1 / 3)
    assert versus["p_value"] == pytest.approx(two_proportion_z_test(1, 2, 1, 3).p_two_sided)
    assert report["explored_slots"]["rate"] == 1.0 and report["model_slots"]["rate"] == 0.0


def test_a_control_without_traffic_still_heads_the_report() -> None:
    report = experiment_report(tally_outcomes(join_events(EVENTS[6:], HORIZON_MS)), "online")
    assert [row["arm"] for row in report["arms"]] == ["online", "popularity"]
    assert report["arms"][0]["ctr"]["rate"] is None
    versus = report["arms"][1]["vs_control"]["ctr"]
    assert versus["difference"] is None and versus["low"] is None and versus["p_value"] == 1.0
    assert len(report_tables(report)) == 3


def test_the_command_reads_an_event_file_and_prints_one_json_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(encode_event(event) for event in EVENTS) + b"\n")
    monkeypatch.setenv("STREAMREC_EXPERIMENT_ARMS", "online=0.8,popularity=0.2")
    result = CliRunner().invoke(
        app, ["experiments", "report", "--events", str(path), "--horizon-s", "60", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert {row["arm"]: row["impressions"] for row in report["arms"]} == {
        "online": 3,
        "popularity": 2,
    }
    table = CliRunner().invoke(app, ["experiments", "report", "--events", str(path)])
    assert table.exit_code == 0 and "popularity" in table.stdout
