"""The live experiment's results per arm: CTR, served HR@K and conversion, with intervals.

``streamrec experiments report`` and the demo report read the impressions serving logged
and the clicks and purchases that followed (from the topics, a bounded read, or from an
event JSON-lines file), join them with the one impression/outcome join
(``streamrec.exposure_outcomes``, the flow's horizon) and count per arm:

- **CTR**: impressions with a click on a shown item, of all impressions;
- **served HR@K**: impressions whose session's next click was on the list, of those
  followed by any click (the live twin of the offline HR@K, K the list's length);
- **conversion**: impressions with a shown item bought, of all impressions.

Each share carries its 95% Wilson interval; each arm other than the control is compared
with it (the difference, Newcombe's 95% interval, the two-sided two-proportion z-test's
p-value), all from ``streamrec.proportions``, the statistics the canary watch decides
with. Exploration is measured like an arm: the CTR of explored slots against the CTR of
the model's slots in the same lists.

Events are deduplicated by ``event_id`` (replays and at-least-once delivery repeat them)
and joined in event-time order, so reading the three topics one after the other counts
the same as the flow does live.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition
from rich.table import Table

from streamrec.events import Event, parse_event
from streamrec.exposure_outcomes import ArmTally, ExposureJoin, ExposureOutcome
from streamrec.kafka_clients import make_consumer, read_until_done
from streamrec.proportions import difference_interval, two_proportion_z_test, wilson_interval
from streamrec.recorded_events import only_events, read_event_lines
from streamrec.settings import KafkaSettings
from streamrec.topics import Topics

METRICS = ("ctr", "served_hr", "conversion")
LABELS = {"ctr": "CTR", "served_hr": "served HR@K", "conversion": "conversion"}
UNLABELLED = "none"  # impressions logged before arms existed


@dataclass(slots=True)
class SlotTally:
    """Shown slots and clicked slots, explored against the model's, in lists that explored."""

    explored_shown: int = 0
    explored_clicked: int = 0
    model_shown: int = 0
    model_clicked: int = 0

    def add(self, outcome: ExposureOutcome) -> None:
        if not outcome.explored:
            return
        explored = set(outcome.explored)
        clicked = set(outcome.clicked)
        for position, item in enumerate(outcome.items):
            hit = item in clicked
            if position in explored:
                self.explored_shown += 1
                self.explored_clicked += hit
            else:
                self.model_shown += 1
                self.model_clicked += hit


@dataclass(slots=True)
class OutcomeTally:
    """Per-arm counts and slot counts of closed outcomes, kept as they close."""

    arms: dict[str, ArmTally] = field(default_factory=dict)
    slots: SlotTally = field(default_factory=SlotTally)

    def add(self, outcome: ExposureOutcome) -> None:
        self.arms.setdefault(outcome.arm or UNLABELLED, ArmTally()).add(outcome)
        self.slots.add(outcome)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutcomeTally:
        arms = {arm: ArmTally(**counts) for arm, counts in data["arms"].items()}
        return cls(arms, SlotTally(**data["slots"]))


def tally_outcomes(outcomes: Iterable[ExposureOutcome]) -> OutcomeTally:
    """Per-arm counts and the slot counts of the outcomes."""
    tally = OutcomeTally()
    for outcome in outcomes:
        tally.add(outcome)
    return tally


def join_events(events: Iterable[Event], horizon_ms: int) -> list[ExposureOutcome]:
    """Every impression's outcome: events deduplicated by id, joined in event-time order."""
    seen: set[str] = set()
    unique = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            unique.append(event)
    unique.sort(key=lambda event: event.ts)
    join = ExposureJoin(horizon_ms, max_open=len(unique) + 1)  # a report closes none early
    outcomes: list[ExposureOutcome] = []
    for event in unique:
        outcomes.extend(join.observe(event))
    outcomes.extend(join.flush())
    return outcomes


def _share(successes: int, trials: int) -> dict[str, Any]:
    low, high = wilson_interval(successes, trials)
    rate = successes / trials if trials else None
    return {"successes": successes, "trials": trials, "rate": rate, "low": low, "high": high}


def _versus(arm: ArmTally, control: ArmTally, metric: str) -> dict[str, Any]:
    """The arm's ``metric`` minus the control's; all None but the p-value (1) without data."""
    (x_arm, n_arm), (x_control, n_control) = arm.counts(metric), control.counts(metric)
    test = two_proportion_z_test(x_arm, n_arm, x_control, n_control)
    if not (n_arm and n_control):
        return {"difference": None, "low": None, "high": None, "p_value": test.p_two_sided}
    low, high = difference_interval(x_arm, n_arm, x_control, n_control)
    return {"difference": test.difference, "low": low, "high": high, "p_value": test.p_two_sided}


def experiment_report(
    tally: OutcomeTally, control: str, metrics: tuple[str, ...] = METRICS
) -> dict[str, Any]:
    """The report as plain data (the ``--json`` object): control first, then by name."""
    arms, slots = tally.arms, tally.slots
    control_tally = arms.get(control, ArmTally())
    order = [control, *sorted(arm for arm in arms if arm != control)]
    rows = []
    for name in order:
        counts = arms.get(name, ArmTally())
        row: dict[str, Any] = {"arm": name, "impressions": counts.impressions}
        for metric in metrics:
            row[metric] = _share(*counts.counts(metric))
        row["vs_control"] = (
            None
            if name == control
            else {metric: _versus(counts, control_tally, metric) for metric in metrics}
        )
        rows.append(row)
    return {
        "control": control,
        "metrics": list(metrics),
        "arms": rows,
        "explored_slots": _share(slots.explored_clicked, slots.explored_shown),
        "model_slots": _share(slots.model_clicked, slots.model_shown),
    }


def report_events(events: Iterable[Event], horizon_ms: int, control: str) -> dict[str, Any]:
    """The report of raw events: joined, counted per arm, compared with ``control``."""
    return experiment_report(tally_outcomes(join_events(events, horizon_ms)), control)


def read_topic_events(
    kafka: KafkaSettings, idle_s: float = 2.0, timeout_s: float = 120.0
) -> list[Event]:
    """The impressions, clicks and purchases on the topics when the read began.

    Bounded: a partition is done at its first record produced after the read began, or
    when the topic has been quiet for ``idle_s`` (the high watermark is not used: tansu
    answers it short by up to its last batch). Payloads that are not valid events are
    skipped (the flow's dead-letter path owns them).
    """
    began_ms = int(time.time() * 1000)
    topics = Topics.from_settings(kafka)
    events: list[Event] = []
    for topic in (topics.impressions, topics.clicks, topics.purchases):
        events.extend(_read_topic(kafka, topic, began_ms, idle_s, timeout_s))
    return events


def _read_topic(
    kafka: KafkaSettings,
    topic: str,
    began_ms: int,
    idle_s: float,
    timeout_s: float,
) -> list[Event]:
    consumer = make_consumer(kafka, "streamrec-experiments-report")
    events: list[Event] = []

    def keep(message: Message) -> bool:
        if message.timestamp()[1] > began_ms:
            return False
        event = parse_event(message.value())
        if isinstance(event, Event):
            events.append(event)
        return True

    try:
        partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        read_until_done(consumer, topic, partitions, keep, idle_s, timeout_s)
    finally:
        consumer.close()
    return events


def read_file_events(path: Path) -> list[Event]:
    """The events of an event JSON-lines file (rejected lines skipped)."""
    return list(only_events(read_event_lines(path)))


def share_text(share: Mapping[str, Any]) -> str:
    """A share and its interval, in percent: ``3.10% [2.50%, 3.80%]``."""
    if share["rate"] is None:
        return "n/a"
    return f"{share['rate']:.2%} [{share['low']:.2%}, {share['high']:.2%}]"


def difference_text(versus: Mapping[str, Any]) -> str:
    """A difference to the control, its interval and p-value, in percentage points."""
    if versus["difference"] is None:
        return "n/a"
    return (
        f"{versus['difference']:+.2%} [{versus['low']:+.2%}, {versus['high']:+.2%}] "
        f"p={versus['p_value']:.3g}"
    )


def report_tables(report: Mapping[str, Any]) -> list[Table]:
    """Rich tables of the report: per arm with intervals, the comparisons, the slots."""
    metrics = report["metrics"]
    labels = [LABELS[m] for m in metrics]
    arms = Table("arm", "impressions", *labels, title="arms (95% Wilson intervals)")
    for row in report["arms"]:
        arms.add_row(row["arm"], f"{row['impressions']:,}", *(share_text(row[m]) for m in metrics))
    versus = Table(
        "arm",
        *labels,
        title=f"difference to the control ({report['control']}): 95% interval, p-value",
    )
    for row in report["arms"]:
        if row["vs_control"] is not None:
            versus.add_row(row["arm"], *(difference_text(row["vs_control"][m]) for m in metrics))
    slots = Table("slots", "shown", "clicked", "CTR", title="exploration (lists that explored)")
    for name, key in (("explored", "explored_slots"), ("model", "model_slots")):
        share = report[key]
        slots.add_row(name, f"{share['trials']:,}", f"{share['successes']:,}", share_text(share))
    return [arms, versus, slots]
