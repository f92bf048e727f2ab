"""A load run is drained when the learner's versions hold what the flow emitted during it,
read from the loop's own metrics (the flow's and the learner's registries)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from flows.metrics import FlowMetrics
from loadtest.load_run import DrainMarks
from loadtest.prometheus_scrape import Scrape, parse_metrics
from online_models.learner.metrics import LearnerMetrics

EXAMPLES = "t-training-examples"


class Loop:
    """The flow's and the learner's metrics, as their endpoints expose them."""

    def __init__(self) -> None:
        self.flow = FlowMetrics(CollectorRegistry())
        self.learner = LearnerMetrics(CollectorRegistry())

    def emit(self, examples: int, dead_letters: int = 0) -> None:
        self.flow.events_in.labels("t-clicks").inc(examples + dead_letters)
        self.flow.messages_out.labels(EXAMPLES).inc(examples)
        self.flow.messages_out.labels("t-events-dlq").inc(dead_letters)

    def publish(self, examples: int) -> None:
        for _ in range(examples):
            self.learner.event_to_weights_seconds.observe(0.3)

    def marks(self) -> DrainMarks:
        return DrainMarks.of(_scrape(self.flow.registry), _scrape(self.learner.registry), EXAMPLES)


def _scrape(registry: CollectorRegistry) -> Scrape:
    return parse_metrics(generate_latest(registry).decode())


def test_drained_only_when_versions_hold_every_example_emitted_during_the_run() -> None:
    loop = Loop()
    loop.emit(500)
    loop.publish(200)  # before the run the learner is behind: not this run's concern
    before = loop.marks()
    assert before.published_since(before)

    loop.emit(300, dead_letters=40)
    assert not loop.marks().published_since(before)  # the learner has not joined yet
    loop.publish(299)
    assert not loop.marks().published_since(before)
    loop.publish(1)
    now = loop.marks()
    assert now.published_since(before)
    assert now.flow_in - before.flow_in == 340  # dead letters are read, not emitted
    assert now.examples_out - before.examples_out == 300


def test_no_endpoints_read_as_zero_counts() -> None:
    assert DrainMarks.of(None, None, EXAMPLES) == DrainMarks()
