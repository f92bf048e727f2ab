"""One session's state: dedupe, event-time order within the lateness bound, late counting."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from flows.session_state import SessionState
from streamrec.session_features import FIELDS

N, LATE_MS = 5, 1000


def click(state: SessionState, event_id: str, ts: int, item: str, category: str | None = "1"):
    if not state.record(event_id):
        return "duplicate"
    return state.apply_click(ts, item, category, N, LATE_MS, event_id)


def test_a_duplicate_event_id_changes_nothing() -> None:
    state = SessionState()
    click(state, "e1", 1000, "a")
    before = state.features()
    assert click(state, "e1", 1000, "a") == "duplicate"
    assert state.features() == before


def test_a_click_within_lateness_goes_to_its_event_time_place() -> None:
    state = SessionState()
    assert click(state, "e1", 1000, "a") == ()
    assert click(state, "e2", 3000, "c") == ("a",)
    assert click(state, "e3", 2500, "b") == ("a",)  # 500 ms late: allowed
    assert state.features().items == ("a", "b", "c")
    assert state.features().late == 0


def test_a_click_beyond_lateness_is_counted_but_kept_out_of_items() -> None:
    state = SessionState()
    click(state, "e1", 5000, "a")
    assert click(state, "e2", 3000, "old", "7") is None
    features = state.features()
    assert features.items == ("a",)
    assert (features.late, features.clicks, features.categories) == (1, 2, {"1": 1, "7": 1})
    assert features.first_ts == 3000


def test_items_keep_only_the_last_n_in_event_time() -> None:
    state = SessionState()
    for index in range(8):
        click(state, f"e{index}", 1000 + index, f"i{index}")
    assert state.features().items == ("i3", "i4", "i5", "i6", "i7")


def test_purchases_fill_bought_once_and_see_earlier_clicks() -> None:
    state = SessionState()
    click(state, "c1", 1000, "a")
    click(state, "c2", 2000, "b")
    assert state.apply_purchase(1500, "a", N, LATE_MS) == ("a",)
    state.apply_purchase(2500, "a", N, LATE_MS)
    features = state.features()
    assert (features.purchases, features.bought, features.gap_ms) == (2, ("a",), 500)


@given(
    clicks=st.lists(st.integers(10**12, 10**12 + 10**6), min_size=1, max_size=15),
    purchases=st.lists(st.integers(10**12, 10**12 + 10**6), max_size=5),
    picks=st.lists(st.booleans(), min_size=20, max_size=20),
)
def test_interleaving_of_the_two_topics_does_not_change_features(
    clicks: list[int], purchases: list[int], picks: list[bool]
) -> None:
    def run(order: list[bool]) -> SessionState:
        state = SessionState()
        queue_c = list(enumerate(clicks))
        queue_p = list(enumerate(purchases))
        for take_click in order + [True] * len(clicks) + [False] * len(purchases):
            if take_click and queue_c:
                index, ts = queue_c.pop(0)
                state.apply_click(ts, f"i{index}", "1", N, LATE_MS, f"c{index}")
            elif not take_click and queue_p:
                index, ts = queue_p.pop(0)
                state.apply_purchase(ts, f"p{index}", N, LATE_MS)
        return state

    clicks_first = [True] * len(clicks) + [False] * len(purchases)
    assert run(picks).features() == run(clicks_first).features()


def test_state_survives_a_json_round_trip() -> None:
    state = SessionState()
    click(state, "e1", 1000, "a")
    state.apply_purchase(1200, "a", N, LATE_MS)
    restored = SessionState.from_json(state.to_json())
    assert restored.features() == state.features()
    assert not restored.record("e1")


def test_each_item_keeps_its_click_event_id_and_time_in_event_time_order() -> None:
    state = SessionState()
    for event_id, ts, item in [("e1", 1000, "a"), ("e2", 3000, "c"), ("e3", 2500, "b")]:
        click(state, event_id, ts, item)
    click(state, "e4", 100, "old")  # beyond lateness: not an item, so no event either
    features = state.features()
    assert features.items == ("a", "b", "c")
    assert features.events == (("e1", 1000), ("e3", 2500), ("e2", 3000))


def test_events_are_bounded_like_items() -> None:
    state = SessionState()
    for index in range(8):
        click(state, f"e{index}", 1000 + index, f"i{index}")
    assert [event_id for event_id, _ in state.features().events] == ["e3", "e4", "e5", "e6", "e7"]


def test_a_state_saved_before_event_ids_existed_restores_with_empty_ids() -> None:
    state = SessionState()
    click(state, "e1", 1000, "a")
    old = orjson.dumps(orjson.loads(state.to_json())[:13])  # the layout without item_events
    restored = SessionState.from_json(old)
    assert restored.features().events == (("", 1000),)
    click(restored, "e2", 2000, "b")
    assert restored.features().events == (("", 1000), ("e2", 2000))


def test_the_hash_carries_the_events_only_when_asked() -> None:
    state = SessionState()
    click(state, "e1", 1000, "a")
    values = dict(zip(FIELDS, state.hash_values(True), strict=True))
    assert orjson.loads(values["events"]) == [["e1", 1000]]
    assert dict(zip(FIELDS, state.hash_values(False), strict=True))["events"] == b"[]"
