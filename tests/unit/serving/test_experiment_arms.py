"""Experiment arms: sticky assignment by traffic share, and who answers when an arm can't."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client import CollectorRegistry

from serving.experiment_arms import (
    ONLINE,
    POPULARITY,
    ArmAssignment,
    ArmModel,
    ArmRouter,
    CanaryVersion,
    PinnedVersion,
    assignment_point,
    pinned_version,
)
from serving.hot_swap import ModelFollower, ModelHolder, ModelSnapshot
from serving.metrics import ServingMetrics
from tests.unit.serving.test_hot_swap import ITEMS, FakeRegistry, FakeScorer

SHARES = {"online": 0.7, "popularity": 0.2, "canary": 0.1}
SESSIONS = [f"session-{n}" for n in range(10_000)]


class CanaryRegistry(FakeRegistry):
    canary: int | None = None

    def canary_version(self) -> int | None:
        return self.canary


def snapshot(version: int) -> ModelSnapshot:
    return ModelSnapshot.build(FakeScorer(version, ITEMS), "startup")


def test_a_session_keeps_its_arm_across_calls_and_processes() -> None:
    first = ArmAssignment.from_shares("exp-a", SHARES)
    again = ArmAssignment.from_shares("exp-a", dict(SHARES))
    assert [first.arm_of(s) for s in SESSIONS[:500]] == [again.arm_of(s) for s in SESSIONS[:500]]
    # blake2b, not the per-process salted hash(): a fixed value for a fixed input.
    assert assignment_point("exp-a", "session-1") == assignment_point("exp-a", "session-1")
    assert 0.0 <= assignment_point("exp-a", "session-1") < 1.0


def test_arms_get_their_configured_shares_over_10k_sessions() -> None:
    assignment = ArmAssignment.from_shares("exp-a", SHARES)
    counts = Counter(assignment.arm_of(s) for s in SESSIONS)
    for arm, share in SHARES.items():
        assert counts[arm] / len(SESSIONS) == pytest.approx(share, abs=0.02)


def test_shares_are_normalised_and_a_zero_share_arm_gets_no_session() -> None:
    assignment = ArmAssignment.from_shares("exp-b", {"online": 3, "pinned-4": 0, "popularity": 1})
    counts = Counter(assignment.arm_of(s) for s in SESSIONS)
    assert counts["pinned-4"] == 0
    assert counts["online"] / len(SESSIONS) == pytest.approx(0.75, abs=0.02)


def test_changing_the_experiment_name_reshuffles_sessions() -> None:
    a = ArmAssignment.from_shares("exp-a", {"online": 0.5, "popularity": 0.5})
    b = ArmAssignment.from_shares("exp-b", {"online": 0.5, "popularity": 0.5})
    moved = sum(a.arm_of(s) != b.arm_of(s) for s in SESSIONS[:2000])
    assert 800 < moved < 1200  # independent halves: about half the sessions move


def test_a_single_arm_answers_without_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_: object) -> float:
        raise AssertionError("hashed with a single arm")

    monkeypatch.setattr("serving.experiment_arms.assignment_point", never)
    assert ArmAssignment.from_shares("default", {"online": 1.0}).arm_of("s") == ONLINE


def test_pinned_version_reads_the_arm_name() -> None:
    assert pinned_version("pinned-12") == 12
    assert pinned_version("canary") is None and pinned_version(ONLINE) is None


def router_with(
    arm: str, control: str, models: dict[str, ArmModel]
) -> tuple[ArmRouter, ModelHolder]:
    online = ModelHolder()
    online.swap(snapshot(9))
    return ArmRouter(ArmAssignment.from_shares("e", {arm: 1.0}), control, online, models), online


def test_a_canary_arm_serves_the_canary_once_loaded_and_the_control_before() -> None:
    registry = CanaryRegistry(current=9)
    source = CanaryVersion(registry)
    model = ArmModel(ModelHolder(), source)
    router, online = router_with("canary", ONLINE, {"canary": model})
    assert router.route("s") == (ONLINE, online.current)  # no canary: the control, so labelled
    registry.canary = 11
    assert source.current_version() == 11
    assert router.route("s") == (ONLINE, online.current)  # pointer set, not loaded yet
    model.holder.swap(snapshot(11))
    arm, served = router.route("s")
    assert arm == "canary" and served is not None and served.version == 11
    registry.canary = None  # rolled back: the loaded snapshot is no longer the canary
    source.current_version()
    assert router.route("s") == (ONLINE, online.current)


def test_a_pinned_arm_serves_only_its_version() -> None:
    model = ArmModel(ModelHolder(), PinnedVersion(FakeRegistry(current=9), 4))
    router, _ = router_with("pinned-4", POPULARITY, {"pinned-4": model})
    assert router.route("s") == (POPULARITY, None)  # not loaded: the control (popularity)
    model.holder.swap(snapshot(3))  # the registry fell back to an older version
    assert router.route("s") == (POPULARITY, None)
    model.holder.swap(snapshot(4))
    arm, served = router.route("s")
    assert arm == "pinned-4" and served is not None and served.version == 4


def test_the_popularity_arm_answers_without_a_model() -> None:
    router, _ = router_with(POPULARITY, POPULARITY, {})
    assert router.route("s") == (POPULARITY, None)


def test_a_pinned_arms_follower_loads_its_version_under_its_own_gauge() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    model = ArmModel(ModelHolder(), PinnedVersion(FakeRegistry(current=9), 4))
    follower = ModelFollower(
        model.holder, model.source, lambda weights, _: FakeScorer(weights.version, ITEMS),
        redis_client=None, channel="", poll_interval_s=60, category_refresh_s=3600,
        read_categories=dict, metrics=metrics, retry_base_s=1, retry_max_s=8, arm="pinned-4",
    )  # fmt: skip
    follower.check_now()
    served = model.snapshot()
    assert served is not None and served.version == 4
    sample = metrics.registry.get_sample_value
    assert sample("streamrec_serving_arm_model_version", {"arm": "pinned-4"}) == 4
    assert sample("streamrec_serving_model_version") == 0  # the online model's gauge untouched
