"""The seeded generator: deterministic, with drift where the ground truth says."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson

from loadtest.synthetic_traffic import GeneratorConfig, Scenario, generate, write_scenario
from streamrec.events import Event, Rejection, parse_event


def clicks(config: GeneratorConfig) -> list[Event]:
    lines, _ = generate(config)
    return [e for e in map(parse_event, lines) if isinstance(e, Event)]


def test_same_seed_same_stream_and_other_seed_differs() -> None:
    config = GeneratorConfig(events=2000, seed=3)
    assert list(generate(config)[0]) == list(generate(config)[0])
    assert list(generate(config)[0]) != list(generate(GeneratorConfig(events=2000, seed=4))[0])


def test_stream_has_exactly_the_requested_valid_events_in_time_order() -> None:
    events = clicks(GeneratorConfig(events=3000, seed=1))
    assert len(events) == 3000
    assert len({e.event_id for e in events}) == 3000
    assert all(a.ts < b.ts for a, b in zip(events, events[1:], strict=False))
    assert any(e.type == "purchase" for e in events)


def item_shares(events: list[Event]) -> Counter[str]:
    return Counter(e.item_id for e in events if e.type == "click")


def overlap(a: Counter[str], b: Counter[str]) -> float:
    total_a, total_b = sum(a.values()), sum(b.values())
    return sum(min(a[k] / total_a, b[k] / total_b) for k in a.keys() & b.keys())


def test_abrupt_drift_changes_preferences_at_the_true_index() -> None:
    config = GeneratorConfig(scenario=Scenario.ABRUPT, events=20_000, seed=2)
    events = clicks(config)
    _, truth = generate(config)
    start = truth.drift_start
    assert start == 10_000
    before, late_before = item_shares(events[: start // 2]), item_shares(events[start // 2 : start])
    after = item_shares(events[start:])
    assert overlap(before, late_before) > 0.7
    assert overlap(late_before, after) < 0.5


def test_stationary_has_no_drift() -> None:
    config = GeneratorConfig(scenario=Scenario.STATIONARY, events=20_000, seed=2)
    events = clicks(config)
    assert generate(config)[1].drift_start is None
    assert overlap(item_shares(events[:10_000]), item_shares(events[10_000:])) > 0.7


def test_new_items_take_over_after_the_change() -> None:
    config = GeneratorConfig(scenario=Scenario.NEW_ITEMS, events=10_000, seed=5)
    events = clicks(config)
    start = generate(config)[1].drift_start
    assert not any(e.item_id.startswith("n") for e in events[:start])
    share_new = sum(e.item_id.startswith("n") for e in events[start + 1000 :]) / len(
        events[start + 1000 :]
    )
    assert share_new > 0.5


def test_gradual_drift_mixes_regimes_between_start_and_end() -> None:
    _, truth = generate(GeneratorConfig(scenario=Scenario.GRADUAL, events=10_000))
    assert truth.drift_start == 5000 and truth.drift_end == 7000


def test_bad_lines_are_counted_and_each_is_rejected_with_its_reason(tmp_path: Path) -> None:
    config = GeneratorConfig(events=5000, seed=9, bad_fraction=0.05)
    out = tmp_path / "stream.jsonl"
    truth = write_scenario(config, out)
    lines = out.read_bytes().splitlines()
    results = [parse_event(line) for line in lines]
    reasons = Counter(r.reason.value for r in results if isinstance(r, Rejection))
    assert sum(isinstance(r, Event) for r in results) == 5000
    assert truth.bad_lines == sum(reasons.values()) > 150
    assert reasons == Counter(truth.bad_by_reason)
    saved = orjson.loads((tmp_path / "stream.jsonl.truth.json").read_bytes())
    assert saved["bad_lines"] == truth.bad_lines
