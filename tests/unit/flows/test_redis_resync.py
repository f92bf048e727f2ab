"""When an owner of flow state must write it all to Redis again, and who reports the loss."""

from __future__ import annotations

from datetime import UTC, datetime

from flows.redis_resync import Resync, ResyncCheck, new_marker


class Marker:
    """The marker key in memory: ``lose`` empties it, ``away`` makes reads fail."""

    def __init__(self) -> None:
        self.value: str | None = None
        self.away = False
        self.reads = 0

    def read(self) -> tuple[str, bool] | None:
        self.reads += 1
        if self.away:
            return None
        if self.value is None:
            self.value = new_marker()
            return self.value, True
        return self.value, False


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_first_start_writes_everything_once_without_reporting_a_loss() -> None:
    marker, clock = Marker(), Clock()
    check = ResyncCheck(marker, 1.0, clock)
    resync = check.due(None)
    assert resync == Resync(marker.value, detected=False)
    assert check.due(resync.marker) is None, "not due again within the interval"
    clock.now += 1.0
    assert check.due(resync.marker) is None and marker.reads == 2


def test_checks_follow_the_interval_and_tell_bytewax_when() -> None:
    marker, clock = Marker(), Clock()
    check = ResyncCheck(marker, 2.5, clock)
    synced = check.due(None).marker
    assert check.next_check_at == datetime.fromtimestamp(clock.now + 2.5, UTC)
    clock.now += 2.4
    check.due(synced)
    assert marker.reads == 1
    clock.now += 0.1
    check.due(synced)
    assert marker.reads == 2


def test_the_owner_that_finds_the_marker_gone_reports_the_loss_the_others_follow() -> None:
    marker, clock = Marker(), Clock()
    first, second = ResyncCheck(marker, 1.0, clock), ResyncCheck(marker, 1.0, clock)
    synced = first.due(None).marker
    assert second.due(synced) is None
    marker.value = None  # Redis restarted empty
    clock.now += 1.0
    found = first.due(synced)
    followed = second.due(synced)
    assert found == Resync(marker.value, detected=True)
    assert followed == Resync(marker.value, detected=False)
    assert found.marker != synced


def test_an_unreadable_marker_is_checked_again_later_not_taken_as_a_loss() -> None:
    marker, clock = Marker(), Clock()
    check = ResyncCheck(marker, 1.0, clock)
    synced = check.due(None).marker
    marker.away = True
    clock.now += 1.0
    assert check.due(synced) is None
    marker.away = False
    clock.now += 1.0
    assert check.due(synced) is None and marker.reads == 3


def test_markers_are_unique_and_say_when_they_were_made() -> None:
    made = {new_marker() for _ in range(1000)}
    assert len(made) == 1000
    for value in made:
        when = datetime.strptime(value[:20], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - when).total_seconds()) < 60
