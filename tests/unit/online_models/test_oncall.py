"""``streamrec model canary``'s view: the running canary from the pointer and what the
watch recorded, the last one when none runs, nothing borrowed from another canary."""

from __future__ import annotations

from online_models.oncall import canary_view
from streamrec.settings import DriftSettings, ExperimentSettings, Settings

SETTINGS = Settings(
    experiment=ExperimentSettings(arms={"online": 3.0, "canary": 1.0}),
    drift=DriftSettings(canary_deadline_s=600.0, canary_min_impressions=50),
)
RECORDED = {
    "canary_version": "7",
    "canary_control_version": "5",
    "canary_started_ms": "1000000",
    "canary_verdict": "running",
    "canary_reason": "",
    "canary_impressions": "40",
    "canary_clicked": "4",
    "canary_control_impressions": "50",
    "canary_control_clicked": "10",
}


def test_a_running_canary_shows_its_start_deadline_share_and_counts() -> None:
    view = canary_view(SETTINGS, 7, RECORDED, now_ms=1_060_000)
    assert view == {
        "running": True,
        "canary_version": 7,
        "control_version": 5,
        "verdict": "running",
        "reason": None,
        "started_age_s": 60.0,
        "deadline_in_s": 540.0,
        "arm_share": 0.25,
        "min_impressions": 50,
        "canary_impressions": 40,
        "canary_ctr": 0.1,
        "control_impressions": 50,
        "control_ctr": 0.2,
    }


def test_a_canary_set_by_hand_and_not_yet_watched_borrows_nothing_from_the_last_one() -> None:
    view = canary_view(SETTINGS, 9, RECORDED, now_ms=1_060_000)
    assert view["running"] and view["canary_version"] == 9
    unknown = ("control_version", "verdict", "started_age_s", "deadline_in_s", "canary_ctr")
    assert all(view[field] is None for field in unknown)
    assert view["canary_impressions"] is None and view["control_impressions"] is None


def test_without_a_canary_the_last_verdict_shows_and_there_is_no_deadline() -> None:
    ended = RECORDED | {"canary_verdict": "rolled_back", "canary_reason": "by hand"}
    view = canary_view(SETTINGS, None, ended, now_ms=1_060_000)
    assert not view["running"] and view["canary_version"] == 7
    assert (view["verdict"], view["reason"]) == ("rolled_back", "by hand")
    assert view["deadline_in_s"] is None and view["canary_impressions"] == 40


def test_no_canary_ever_and_no_impressions_yet_show_as_none() -> None:
    assert canary_view(SETTINGS, None, {}, now_ms=0)["canary_version"] is None
    fresh = RECORDED | {"canary_impressions": "0", "canary_clicked": "0"}
    view = canary_view(SETTINGS, 7, fresh, now_ms=1_060_000)
    assert view["canary_impressions"] == 0 and view["canary_ctr"] is None
