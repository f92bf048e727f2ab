import orjson

from streamrec.events import Event
from streamrec.exposure_outcomes import ExposureJoin

HORIZON = 60_000


def shown(rid: str, session: str, ts: int, *items: str, arm: str | None = "online") -> Event:
    return Event(rid, "impression", session, ts, request_id=rid, items=items, arm=arm)


def click(eid: str, session: str, ts: int, item: str, rid: str | None = None) -> Event:
    return Event(eid, "click", session, ts, item_id=item, request_id=rid)


def buy(eid: str, session: str, ts: int, item: str) -> Event:
    return Event(eid, "purchase", session, ts, item_id=item)


def run(events: list[Event]) -> dict[str, object]:
    join = ExposureJoin(HORIZON)
    closed = [o for e in events for o in join.observe(e)] + join.flush()
    return {o.request_id: o for o in closed}


def test_a_click_citing_the_request_on_a_shown_item_is_a_hit() -> None:
    out = run([shown("r1", "s", 0, "a", "b", "c"), click("c1", "s", 10, "b", "r1")])
    r1 = out["r1"]
    assert r1.clicked == ("b",) and r1.was_clicked and r1.served_hit
    assert r1.ignored == ("a", "c") and r1.arm == "online"


def test_nothing_within_the_horizon_is_a_miss_closed_by_event_time() -> None:
    join = ExposureJoin(HORIZON)
    assert join.observe(shown("r1", "s", 0, "a", "b")) == []
    assert join.observe(click("c1", "other", HORIZON, "x")) == []
    closed = join.observe(click("c2", "other", HORIZON + 1, "a"))
    assert [o.request_id for o in closed] == ["r1"]
    assert not closed[0].was_clicked and closed[0].next_click is None
    assert closed[0].ignored == ("a", "b") and join.open_count == 0


def test_the_sessions_own_click_past_the_horizon_is_not_the_outcome() -> None:
    join = ExposureJoin(HORIZON)
    join.observe(shown("r1", "s", 0, "a", "b"))
    closed = join.observe(click("c1", "s", HORIZON + 1, "a", "r1"))
    assert [o.request_id for o in closed] == ["r1"]
    assert not closed[0].was_clicked and closed[0].next_click is None
    on_time = run([shown("r1", "s", 0, "a"), click("c1", "s", HORIZON, "a")])["r1"]
    assert on_time.was_clicked


def test_a_click_elsewhere_is_the_next_click_but_not_a_hit() -> None:
    out = run([shown("r1", "s", 0, "a", "b"), click("c1", "s", 5, "z"), click("c2", "s", 9, "a")])
    r1 = out["r1"]
    assert r1.next_click == "z" and not r1.served_hit
    assert r1.clicked == ("a",), "an uncited click on a shown item still counts within the horizon"


def test_uncited_clicks_go_to_the_latest_impression_that_showed_the_item() -> None:
    out = run(
        [
            shown("r1", "s", 0, "a", "b"),
            shown("r2", "s", 5, "b", "c"),
            click("c1", "s", 9, "b"),
        ]
    )
    assert out["r2"].clicked == ("b",) and out["r1"].clicked == ()
    assert out["r1"].next_click == "b" == out["r2"].next_click


def test_purchases_of_shown_items_convert_and_other_sessions_do_not_count() -> None:
    out = run(
        [
            shown("r1", "s", 0, "a", "b"),
            buy("p0", "t", 3, "a"),
            buy("p1", "s", 4, "b"),
            buy("p2", "s", 5, "q"),
        ]
    )
    assert out["r1"].purchased == ("b",) and out["r1"].converted


def test_a_repeated_impression_keeps_the_first_and_a_bound_closes_the_oldest() -> None:
    join = ExposureJoin(HORIZON, max_open=2)
    join.observe(shown("r1", "s", 0, "a"))
    join.observe(shown("r1", "s", 1, "zzz"))
    join.observe(shown("r2", "s", 2, "b"))
    closed = join.observe(shown("r3", "t", 3, "c"))
    assert [o.request_id for o in closed] == ["r1"] and closed[0].items == ("a",)
    assert join.open_count == 2


def test_advance_closes_by_a_clock_when_no_event_arrives() -> None:
    join = ExposureJoin(HORIZON)
    join.observe(shown("r1", "s", 0, "a"))
    assert join.advance(HORIZON - 1) == [] and join.open_count == 1
    assert [o.request_id for o in join.advance(HORIZON + 1)] == ["r1"]
    assert join.advance(0) == [] and join.watermark == HORIZON + 1, "never moves back"


def test_a_restored_join_closes_each_open_outcome_once_with_what_came_before() -> None:
    join = ExposureJoin(HORIZON)
    join.observe(shown("r1", "s", 0, "a", "b"))
    join.observe(click("c1", "s", 5, "b", "r1"))
    join.observe(shown("r2", "t", 6, "c"))
    restored = ExposureJoin.restore(HORIZON, 100, orjson.loads(orjson.dumps(join.state())))
    assert restored.watermark == 6 and restored.open_count == 2
    closed = restored.observe(click("c2", "t", 7, "c")) + restored.flush()
    assert [(o.request_id, o.clicked, o.items) for o in closed] == [
        ("r1", ("b",), ("a", "b")),
        ("r2", ("c",), ("c",)),
    ]
    assert ExposureJoin.restore(HORIZON, 100, None).open_count == 0
