"""The canary verdict: when a canary is promoted, rolled back, or left to the deadline."""

from __future__ import annotations

import doctest
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

import online_models.drift.canary_watch as canary_watch
from online_models.drift.canary_watch import CanaryWatch, judge_canary
from streamrec.exposure_outcomes import ArmTally, ExposureOutcome

REQUEST_IDS = (f"r{n}" for n in itertools.count())
DEFAULTS = {"min_impressions": 500, "alpha": 0.05, "expired": False, "on_deadline": "control"}


def outcome(
    arm: str, version: int, *, clicked: bool = False, hit: bool = False, ts: int = 1_000
) -> ExposureOutcome:
    return ExposureOutcome(
        next(REQUEST_IDS), "s", ts, ("a", "b"), version, arm,
        clicked=("a",) if clicked else (), next_click="b" if hit else None,
    )  # fmt: skip


def followed(impressions: int, clicked: int, hits: int) -> ArmTally:
    """An arm's counts where every impression was followed by a click (served HR's trials)."""
    return ArmTally(impressions=impressions, clicked=clicked, followed=impressions, hits=hits)


def test_the_docstring_example_holds() -> None:
    assert doctest.testmod(canary_watch).failed == 0


def test_no_verdict_before_both_arms_reach_the_minimum() -> None:
    assert judge_canary(followed(10_000, 100, 100), followed(499, 5, 5), **DEFAULTS) is None


def test_a_canary_with_a_clearly_lower_ctr_is_rolled_back() -> None:
    verdict = judge_canary(followed(1000, 30, 300), followed(1000, 60, 300), **DEFAULTS)
    assert verdict is not None and verdict.action == "roll_back"
    assert "CTR" in verdict.reason and "served HR" not in verdict.reason
    assert verdict.ctr_test.p_less < 0.05


def test_a_lower_served_hit_rate_alone_rolls_back_too() -> None:
    verdict = judge_canary(followed(1000, 50, 200), followed(1000, 50, 260), **DEFAULTS)
    assert verdict is not None and verdict.action == "roll_back"
    assert "served HR" in verdict.reason


def test_a_canary_not_significantly_worse_is_promoted() -> None:
    verdict = judge_canary(followed(1000, 48, 290), followed(1000, 50, 300), **DEFAULTS)
    assert verdict is not None and verdict.action == "promote"


@pytest.mark.parametrize(
    ("on_deadline", "action"), [("control", "keep_control"), ("promote", "promote")]
)
def test_the_deadline_with_too_little_traffic_does_what_configuration_says(
    on_deadline: str, action: str
) -> None:
    settings = DEFAULTS | {"expired": True, "on_deadline": on_deadline}
    verdict = judge_canary(followed(10, 0, 0), followed(900, 90, 90), **settings)
    assert verdict is not None and verdict.action == action
    assert "deadline" in verdict.reason


@given(st.integers(500, 5000), st.data())
def test_identical_arms_are_never_rolled_back(impressions: int, data: st.DataObject) -> None:
    clicked = data.draw(st.integers(0, impressions))
    hits = data.draw(st.integers(0, impressions))
    tally = followed(impressions, clicked, hits)
    verdict = judge_canary(tally, tally, **DEFAULTS)
    assert verdict is not None and verdict.action == "promote"


def test_the_watch_counts_only_the_canary_version_and_the_control_since_the_start() -> None:
    watch = CanaryWatch(
        7, started_ms=1_000, control="online", min_impressions=2, alpha=0.05,
        deadline_ms=10_000, on_deadline="control",
    )  # fmt: skip
    for counted in [
        outcome("canary", 7, clicked=True, hit=True),
        outcome("online", 6, clicked=True),
        outcome("online", 8),
    ]:
        watch.observe(counted)
    for ignored in [
        outcome("canary", 5, clicked=True),  # an earlier canary's label
        outcome("popularity", 6),  # neither arm
        outcome("online", 6, ts=999),  # before the canary started
    ]:
        watch.observe(ignored)
    repeated = outcome("online", 6, clicked=True)
    watch.observe(repeated)
    watch.observe(repeated)  # delivered twice: counted once
    assert watch.canary == ArmTally(impressions=1, clicked=1, followed=1, hits=1)
    assert watch.control_tally == ArmTally(impressions=3, clicked=2)
    assert watch.verdict(now_ms=10_999) is None
    expired = watch.verdict(now_ms=11_000)
    assert expired is not None and expired.action == "keep_control"
