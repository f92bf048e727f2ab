"""How a micro-batch fills: ``batch_ms`` after its first message arrived, counting the
time a waiting message spent behind the previous step. A scripted consumer and clock: no
broker, no sleeps."""

from __future__ import annotations

from dataclasses import dataclass, field

from online_models.learner.batch_fill import fill_batch

WINDOW_S = 0.1


@dataclass(frozen=True, slots=True)
class Polled:
    number: int
    failed: bool = False

    def error(self) -> object:
        return "broker error" if self.failed else None


@dataclass(slots=True)
class ScriptedConsumer:
    """Each call returns the next scripted messages; a call that returns none waits its
    whole timeout on the clock, one that returns some takes ``arrive_after_s`` of it."""

    replies: list[list[Polled]]
    arrive_after_s: float = 0.0
    now_s: float = 0.0
    calls: list[tuple[int, float]] = field(default_factory=list)

    def consume(self, count: int, timeout_s: float) -> list[Polled]:
        self.calls.append((count, round(timeout_s, 6)))
        reply = self.replies.pop(0) if self.replies else []
        self.now_s += min(self.arrive_after_s, timeout_s) if reply else timeout_s
        return reply[:count]

    def clock(self) -> float:
        return self.now_s


def messages(count: int, start: int = 0) -> list[Polled]:
    return [Polled(number) for number in range(start, start + count)]


def test_messages_that_waited_through_a_long_step_make_a_batch_at_once() -> None:
    consumer = ScriptedConsumer([messages(5), messages(3, 5)], now_s=0.3)  # step: 0.3 s
    batch = fill_batch(consumer.consume, 256, WINDOW_S, 0.0, consumer.clock)
    assert [m.number for m in batch] == [0, 1, 2, 3, 4]
    assert consumer.calls == [(256, 0.0)]  # the window closed during the step: no wait


def test_after_a_short_step_the_batch_waits_only_the_rest_of_the_window() -> None:
    consumer = ScriptedConsumer([messages(5), messages(3, 5), []], now_s=0.04)
    batch = fill_batch(consumer.consume, 256, WINDOW_S, 0.0, consumer.clock)
    assert len(batch) == 8
    assert consumer.calls[:2] == [(256, 0.0), (251, 0.06)]


def test_an_idle_consumer_opens_the_window_at_its_first_message() -> None:
    consumer = ScriptedConsumer([[], messages(1), messages(2, 1)], arrive_after_s=0.03)
    consumer.now_s = 5.0  # long after the last batch
    batch = fill_batch(consumer.consume, 256, WINDOW_S, 0.0, consumer.clock)
    assert len(batch) == 3
    # nothing waiting; the first message comes 0.03 s into a full-window wait, then the
    # window runs from it: 0.1 s more, of which the next message takes 0.03
    assert consumer.calls[:3] == [(256, 0.0), (256, WINDOW_S), (255, WINDOW_S)]
    assert consumer.calls[3] == (253, round(WINDOW_S - 0.03, 6))


def test_an_idle_poll_returns_empty_after_one_window() -> None:
    consumer = ScriptedConsumer([])
    assert fill_batch(consumer.consume, 256, WINDOW_S, None, consumer.clock) == []
    assert consumer.calls == [(256, 0.0), (256, WINDOW_S)]


def test_a_full_batch_returns_without_waiting() -> None:
    consumer = ScriptedConsumer([messages(6)], now_s=0.01)
    assert len(fill_batch(consumer.consume, 6, WINDOW_S, 0.0, consumer.clock)) == 6
    assert consumer.calls == [(6, 0.0)]


def test_messages_with_an_error_are_dropped() -> None:
    consumer = ScriptedConsumer([[Polled(0), Polled(1, failed=True), Polled(2)]], now_s=0.2)
    batch = fill_batch(consumer.consume, 256, WINDOW_S, 0.0, consumer.clock)
    assert [m.number for m in batch] == [0, 2]
