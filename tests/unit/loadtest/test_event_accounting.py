"""The fault drill's accounting of acknowledged events: in Redis, ended, lost, unexplained."""

from __future__ import annotations

from loadtest.event_accounting import Faults, account_events
from streamrec.events import Event

DAY_MS = 86_400_000
TTL_MS = 7 * DAY_MS


def click(n: int, session: str, day: float) -> Event:
    return Event(f"e{n}", "click", session, int(day * DAY_MS), item_id="i1")


def test_all_counted_is_all_in_redis() -> None:
    acked = [click(0, "a", 0), click(1, "a", 0.1), click(2, "b", 0.2)]
    result = account_events(acked, {"a": 2, "b": 1}, TTL_MS, Faults())
    assert result.in_redis == 3
    assert result.missing == result.unexplained == result.counted_twice == 0


def test_a_shortfall_with_no_fault_is_unexplained_and_extra_counts_are_doubles() -> None:
    acked = [click(0, "a", 0), click(1, "a", 0.1), click(2, "b", 0.2)]
    result = account_events(acked, {"a": 1, "b": 2}, TTL_MS, Faults())
    assert (result.missing, result.unexplained, result.counted_twice) == (1, 1, 1)


def test_a_session_idle_past_the_ttl_at_a_redis_loss_ended() -> None:
    # "a" was last active on day 0; by the Redis loss (after 3 events) event time is day 8.
    acked = [click(0, "a", 0), click(1, "a", 0.5), click(2, "b", 8), click(3, "b", 8.1)]
    faults = Faults(redis_losses=(3,))
    ended = account_events(acked, {"b": 2}, TTL_MS, faults)
    assert (ended.missing, ended.ended, ended.unexplained) == (2, 2, 0)
    # Not idle long enough at the loss: the flow still had it and must write it again.
    recent = [click(0, "a", 5), click(1, "a", 5.5), click(2, "b", 8), click(3, "b", 8.1)]
    assert account_events(recent, {"b": 2}, TTL_MS, faults).unexplained == 2


def test_an_idle_gap_past_the_ttl_starts_a_new_session_under_the_same_id() -> None:
    acked = [click(0, "a", 0), click(1, "a", 0.1), click(2, "a", 9)]
    result = account_events(acked, {"a": 1}, TTL_MS, Faults())
    assert (result.ended, result.unexplained) == (2, 0)
    # Ended events explain a shortfall only up to their number.
    assert account_events(acked, {}, TTL_MS, Faults()).unexplained == 1


def test_events_just_before_a_broker_restart_are_lost_with_it() -> None:
    acked = [click(n, f"s{n}", n / 100) for n in range(10)]
    counted = {f"s{n}": 1 for n in range(10) if n not in (3, 7, 8)}
    result = account_events(acked, counted, TTL_MS, Faults(broker_restarts=(9,), broker_window=3))
    assert (result.missing, result.lost_with_broker, result.unexplained) == (3, 2, 1)
