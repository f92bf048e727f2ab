"""Experiments end to end: the app assigns arms, impressions carry them, the report counts.

The app is the real one (``create_app``) on the real Redis and the real broker, with the
test registry's fake model (``tests/unit/serving/test_hot_swap.py``): arms, exploration
and impressions are what is under test here, not the model.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable

import pytest
import redis
from starlette.testclient import TestClient

from loadtest.experiment_report import (
    experiment_report,
    join_events,
    read_topic_events,
    tally_outcomes,
)
from serving.app import ServingState, create_app
from serving.openapi import ModelResponse
from streamrec.events import Event, encode_event, parse_event
from streamrec.kafka_clients import make_producer
from streamrec.redis_keys import RedisKeys
from streamrec.session_features import SessionFeatures, encode_session_features
from streamrec.settings import ExperimentSettings, ServingSettings, Settings
from streamrec.topics import Topics
from tests.kafka_reading import read_topic
from tests.unit.serving.test_hot_swap import ITEMS, FakeRegistry, FakeScorer

pytestmark = pytest.mark.integration
SHARES = {"online": 0.5, "popularity": 0.3, "pinned-1": 0.2}
SESSIONS = 10_000


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def app_client(settings: Settings, registry: FakeRegistry | None = None) -> TestClient:
    app = create_app(
        settings,
        registry=registry or FakeRegistry(current=2),
        build_scorer=lambda weights, previous: FakeScorer(weights.version, ITEMS),
    )
    return TestClient(app)


def state_of(client: TestClient) -> ServingState:
    return client.app.state.serving  # type: ignore[attr-defined]


def test_arms_are_sticky_match_their_shares_and_label_the_impressions(
    settings: Settings, redis_client: redis.Redis
) -> None:
    settings = settings.model_copy(
        update={
            "experiment": ExperimentSettings(name="integration", arms=SHARES),
            "serving": ServingSettings(impression_batch_ms=5),
        }
    )
    keys = RedisKeys(settings.redis.key_prefix)
    redis_client.zadd(keys.popular, {"i1": 3.0, "i2": 2.0, "i3": 1.0})
    known = SessionFeatures(("i4",), 1, 0, (), {}, 1, 1, 1)
    redis_client.hset(keys.session("known-0"), mapping=encode_session_features(known))
    served: dict[str, dict] = {}
    with app_client(settings) as client:
        state = state_of(client)
        wait_until(lambda: state.router.resolve("pinned-1")[0] == "pinned-1", "pinned-1 loaded")
        wait_until(lambda: state.holder.current is not None, "online model loaded")
        for n in range(SESSIONS):
            answer = client.get("/recommend", params={"session_id": f"known-{n}", "k": 3})
            assert answer.status_code == 200
            served[answer.json()["request_id"]] = answer.json()
        again = [
            client.get("/recommend", params={"session_id": f"known-{n}"}).json()["arm"]
            for n in range(200)
        ]
        metrics = client.get("/metrics").text
    arms = Counter(body["arm"] for body in served.values())
    for arm, share in SHARES.items():
        assert arms[arm] / SESSIONS == pytest.approx(share, abs=0.02)
    by_session = {body["session_id"]: body["arm"] for body in served.values()}
    assert again == [by_session[f"known-{n}"] for n in range(200)]  # sticky
    versions = {body["arm"]: body["model_version"] for body in served.values()}
    assert versions["popularity"] is None  # popular items, by design
    # The one known session was scored by its arm's model, unless popularity answered it.
    first = served_by_session(served, "known-0")
    assert first["model_version"] == {"online": 2, "pinned-1": 1, "popularity": None}[first["arm"]]
    pinned_requests = arms["pinned-1"] + again.count("pinned-1")
    assert f'streamrec_serving_arm_requests_total{{arm="pinned-1"}} {pinned_requests}.0' in metrics

    impressions = read_topic(
        settings.kafka, Topics.from_settings(settings.kafka).impressions, SESSIONS + 200
    )
    logged = {}
    for message in impressions:
        event = parse_event(message.value())
        assert isinstance(event, Event)
        logged[event.request_id] = event
    assert set(served) <= set(logged)
    for request_id, body in served.items():
        event = logged[request_id]
        assert (event.arm, event.model_version) == (body["arm"], body["model_version"])
        assert event.items == tuple(item["item_id"] for item in body["items"])


def test_model_shows_each_arms_follower_and_who_answers_its_sessions(
    settings: Settings,
) -> None:
    """pinned-9 cannot load (the registry fails on it): the control answers its sessions."""
    arms = {"online": 0.5, "pinned-1": 0.25, "pinned-9": 0.25}
    settings = settings.model_copy(
        update={"experiment": ExperimentSettings(name="model-arms", arms=arms)}
    )
    registry = FakeRegistry(current=2, errors={9: KeyError("version 9 was never published")})
    with app_client(settings, registry) as client:
        state = state_of(client)
        wait_until(lambda: state.router.resolve("pinned-1")[0] == "pinned-1", "pinned-1 loaded")
        wait_until(lambda: state.arm_followers["pinned-9"].failed_versions() == [9], "9 failed")
        wait_until(lambda: state.holder.current is not None, "online model loaded")
        body = client.get("/model").json()
    model = ModelResponse.model_validate(body)
    assert model.version == 2 and model.worker_index == 0
    followers = {arm.arm: arm for arm in model.arms}
    assert set(followers) == {"pinned-1", "pinned-9"}  # online is the model above
    pinned, missing = followers["pinned-1"], followers["pinned-9"]
    assert (pinned.version, pinned.wanted_version, pinned.answers) == (1, 1, True)
    assert pinned.answered_by == "pinned-1" and pinned.failed_versions == []
    assert (missing.version, missing.wanted_version, missing.answers) == (None, 9, False)
    assert missing.answered_by == "online"
    assert [failed.version for failed in missing.failed_versions] == [9]
    assert "never published" in missing.failed_versions[0].reason


def served_by_session(served: dict[str, dict], session_id: str) -> dict:
    return next(body for body in served.values() if body["session_id"] == session_id)


def test_exploration_fills_the_last_slot_with_a_new_item_and_marks_it(
    settings: Settings, redis_client: redis.Redis
) -> None:
    settings = settings.model_copy(
        update={
            "serving": ServingSettings(
                explore_slots=1, explore_max_shown=5, explore_refresh_s=0.05, explore_seed=3,
                impression_batch_ms=5,
            )
        }
    )  # fmt: skip
    keys = RedisKeys(settings.redis.key_prefix)
    # Every item but i0 and i1 has been shown often: only those two are new.
    redis_client.hset(keys.item_shown, mapping={item: 50 for item in ITEMS[2:]} | {"i1": 2})
    features = SessionFeatures(("i5",), 1, 0, (), {}, 1, 1, 1)
    redis_client.hset(keys.session("s-explore"), mapping=encode_session_features(features))
    with app_client(settings) as client:
        state = state_of(client)
        assert state.new_items is not None
        pool = state.new_items
        wait_until(lambda: set(pool.current.item_ids) == {"i0", "i1"}, "new items read")
        bodies = [
            client.get("/recommend", params={"session_id": "s-explore", "k": 4}).json()
            for _ in range(20)
        ]
        excluded = client.post(
            "/recommend", json={"session_id": "s-explore", "k": 4, "exclude_items": ["i0", "i1"]}
        ).json()
    for body in bodies:
        items = [item["item_id"] for item in body["items"]]
        assert len(items) == 4 and len(set(items)) == 4
        assert items[3] in {"i0", "i1"} and items[:3] == ["i9", "i8", "i7"]
        assert body["explored"] == [3]
    assert {item["item_id"] for item in excluded["items"]} == {"i9", "i8", "i7", "i6"}
    assert excluded["explored"] == []
    impressions = read_topic(settings.kafka, Topics.from_settings(settings.kafka).impressions, 21)
    events = [parse_event(message.value()) for message in impressions]
    explored = Counter(event.explored for event in events if isinstance(event, Event))
    assert explored == {(3,): 20, (): 1}


def test_the_reports_per_arm_ctr_equals_a_count_of_the_produced_events(
    settings: Settings,
) -> None:
    rng = random.Random(16)
    topics = Topics.from_settings(settings.kafka)
    producer = make_producer(settings.kafka)
    start = int(time.time() * 1000) - 3_600_000
    clicked: Counter[str] = Counter()
    shown: Counter[str] = Counter()
    for n in range(600):
        arm = rng.choice(["online", "online", "canary", "popularity"])
        session, ts, items = f"s{n}", start + n * 10, (f"a{n}", f"b{n}", f"c{n}")
        impression = Event(
            f"r{n}", "impression", session, ts, request_id=f"r{n}", items=items,
            model_version=None if arm == "popularity" else 7, arm=arm,
        )  # fmt: skip
        producer.produce(topics.impressions, encode_event(impression), key=session.encode())
        shown[arm] += 1
        outcome = rng.random()
        if outcome < {"online": 0.3, "canary": 0.4, "popularity": 0.1}[arm]:
            clicked[arm] += 1
            click = Event(f"c{n}", "click", session, ts + 500, item_id=items[1])
            producer.produce(topics.clicks, encode_event(click), key=session.encode())
            producer.produce(topics.clicks, encode_event(click), key=session.encode())  # again
        elif outcome < 0.6:  # a click elsewhere: the next click, not a click on the list
            click = Event(f"c{n}", "click", session, ts + 500, item_id="elsewhere")
            producer.produce(topics.clicks, encode_event(click), key=session.encode())
    assert producer.flush(10) == 0
    events = read_topic_events(settings.kafka, idle_s=2.0, timeout_s=60)
    report = experiment_report(tally_outcomes(join_events(events, 60_000)), control="online")
    ctr = {row["arm"]: (row["ctr"]["successes"], row["ctr"]["trials"]) for row in report["arms"]}
    assert ctr == {arm: (clicked[arm], shown[arm]) for arm in shown}
    rows = {row["arm"]: row for row in report["arms"]}
    assert rows["canary"]["ctr"]["rate"] == pytest.approx(clicked["canary"] / shown["canary"])
    assert rows["canary"]["vs_control"]["ctr"]["p_value"] < 1.0
