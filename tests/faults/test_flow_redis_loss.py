"""Redis restarts empty under a running flow: every session comes back, not only the busy ones.

The flow writes a session when it changes; before re-syncs, the sessions that stayed quiet
after Redis lost its data never came back (28.7% of them in the incident). The test's own
redis-server is killed and started again, empty, on the same port; on a Redis Cluster, one
of its three masters is (its slots' keys lost, the others' kept).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from flows.item_popularity import ItemPopularity
from online_models.alerts.tail import latest_alerts
from streamrec.alerts import Alert
from streamrec.events import Event
from streamrec.redis_connection import connect_redis
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings
from tests.faults.tailing_flow import flow_alerts, start_flow, stop_flow, wait_while_running
from tests.integration.test_feature_flow import (
    assert_popular_close,
    decoded,
    derived_keys_removed,  # noqa: F401 - autouse fixture: removes the tagged keys
    flow_settings,
    produce_events,
    read_popular,
    read_state,
)
from tests.private_services import PrivateRedis, PrivateRedisCluster
from tests.unit.flows.test_shard import reference_features, sample_events

pytestmark = pytest.mark.faults

# Long enough that no session of the sample leaves the flow's state (all stay live), and a
# zset large enough to hold every item (no ties at its edge).
FLOW_ENV = {
    "STREAMREC_FLOW_SESSION_TTL_S": str(3650 * 86400),
    "STREAMREC_FLOW_POPULAR_SIZE": "50000",
}


def expected_popularity(settings: Settings, events: list) -> dict[str, float]:
    flow = settings.flow
    popularity = ItemPopularity(flow.popular_half_life_s * 1000.0, flow.popular_state_items)
    weights = {"click": 1.0, "purchase": flow.purchase_weight}
    popularity.add([(e.item_id, e.ts, weights[e.type]) for e in events])
    return popularity.scores


def run_through_a_loss(
    lossy: Settings, log: Path, lose: Callable[[set[str]], set[str]]
) -> tuple[list[Event], list[Alert]]:
    """A tailing flow writes the first half of the events; ``lose(sessions written)``
    makes Redis lose data and returns the sessions lost; then the second half, and every
    session must come back (also those that got no new event). Returns the events and
    the flow's alerts."""
    events = sample_events(12_000)
    first, second = events[:6000], events[6000:]
    flow = start_flow(lossy, log, **FLOW_ENV)
    try:
        produce_events(lossy, first)
        before = reference_features(first)
        wait_while_running(flow, log, lambda: decoded(read_state(lossy)) == before, "first half")

        lost = lose(set(before))
        produce_events(lossy, second)
        expected = reference_features(events)
        quiet = lost - {e.session_id for e in second}
        assert len(quiet) > 100, "many lost sessions must get no new event"
        wait_while_running(flow, log, lambda: decoded(read_state(lossy)) == expected, "re-sync")
        alerts = flow_alerts(lossy.kafka, 2, timeout_s=3)
        assert flow.poll() is None, "the flow stopped"
    finally:
        stop_flow(flow)
    assert [(a.detector, a.signal) for a in alerts] == [("redis_resync", "marker_missing")]
    assert_popular_close(read_popular(lossy), expected_popularity(lossy, events))
    return events, alerts


def test_after_redis_restarts_empty_every_live_session_is_written_again(
    settings: Settings, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    lossy = private_redis.attach(flow_settings(settings, "lossy"))

    def lose(written: set[str]) -> set[str]:
        private_redis.restart_empty()
        return written

    events, alerts = run_through_a_loss(lossy, tmp_path / "flow.log", lose)
    client = redis.Redis.from_url(private_redis.url)
    keys = RedisKeys(lossy.redis.key_prefix)
    streamed = [alert for _, alert in latest_alerts(client, keys.alerts, 10)]
    assert [alert.alert_id for alert in streamed] == [alerts[0].alert_id]
    categories = {k.decode(): v.decode() for k, v in client.hgetall(keys.item_categories).items()}
    clicked: dict[str, set[str]] = {}
    for event in events:
        if event.type == "click" and event.category:
            clicked.setdefault(event.item_id, set()).add(event.category)
    assert categories.keys() == clicked.keys()
    assert all(category in clicked[item] for item, category in categories.items())


def test_after_one_cluster_master_restarts_empty_every_live_session_is_written_again(
    settings: Settings, private_redis_cluster: PrivateRedisCluster, tmp_path: Path
) -> None:
    lossy = private_redis_cluster.attach(flow_settings(settings, "lossy-cluster"))
    client = connect_redis(lossy.redis.redis_url.get_secret_value())
    keys = RedisKeys(lossy.redis.key_prefix)

    def lose(written: set[str]) -> set[str]:
        master = private_redis_cluster.master_of(client.keyslot(keys.session(min(written))))
        private_redis_cluster.restart_empty(master)
        kept = read_state(lossy).keys()
        assert kept and kept < written, "one master's sessions are lost, the others' kept"
        return written - kept

    run_through_a_loss(lossy, tmp_path / "flow.log", lose)
