"""The simulated shop judges each list it was served by its session's next click."""

from __future__ import annotations

from loadtest.experiment_report import SlotTally
from loadtest.shop_simulator import LiveSessions
from streamrec.exposure_outcomes import ArmTally


def answer(request_id: str, items: list[str], arm: str, explored: list[int]) -> dict:
    return {
        "request_id": request_id,
        "model_version": None if arm == "popularity" else 4,
        "arm": arm,
        "explored": explored,
        "items": [{"item_id": item, "score": 1.0} for item in items],
    }


def test_each_served_list_is_an_outcome_of_its_arm() -> None:
    live = LiveSessions()
    live.served("s1", answer("r1", ["a", "b", "x"], "online", [2]))
    live.clicked("s1", "x")  # the explored slot was the next click
    live.served("s2", answer("r2", ["a", "b"], "online", []))
    live.clicked("s2", "z")  # a next click off the list
    live.served("s3", answer("r3", ["c"], "popularity", []))
    live.served("s3", answer("r4", ["d"], "popularity", []))  # r3 was ignored
    live.clicked("s3", "d")
    live.served("s4", answer("r5", ["e"], "online", []))  # nothing followed until the end
    tally = live.close()
    assert tally.arms["online"] == ArmTally(impressions=3, clicked=1, followed=2, hits=1)
    assert tally.arms["popularity"] == ArmTally(impressions=2, clicked=1, followed=1, hits=1)
    assert tally.slots == SlotTally(explored_shown=1, explored_clicked=1, model_shown=2)
    assert (live.judged, live.hits) == (3, 2)
