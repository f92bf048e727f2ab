"""Training examples: one builder for the flow and offline, so the two never differ.

The property test feeds random event streams (interleaved sessions, replayed event ids,
out-of-order and too-late clicks, repeat purchases, categories) to the flow's
``FeatureShard`` and to the offline ``examples_from_events`` and demands the same examples.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.event_routing import ShardInput
from flows.example_builder import DUPLICATE, apply_event, examples_from_events
from flows.feature_config import FeatureConfig
from flows.session_state import SessionState
from flows.shard import FeatureShard
from streamrec.events import Event
from streamrec.training_examples import TrainingExample, decode_example, encode_example

T0 = 1_400_000_000_000
LATENESS_MS = 1000
CONFIG = FeatureConfig(history_len=3, lateness_ms=LATENESS_MS, purchase_weight=2.5)
CLICK = Event(event_id="e7", type="click", session_id="s1", ts=T0, item_id="i9", category="3")


def click(event_id: str, item: str, ts: int, session: str = "s1") -> Event:
    return Event(event_id=event_id, type="click", session_id=session, ts=ts, item_id=item)


def purchase(event_id: str, item: str, ts: int, session: str = "s1") -> Event:
    return Event(event_id=event_id, type="purchase", session_id=session, ts=ts, item_id=item)


def test_click_example_carries_history_target_category_and_source() -> None:
    state = SessionState()
    assert apply_event(state, click("e1", "i1", T0 - 2), CONFIG, "clicks", 2, 40) is None
    example = apply_event(state, CLICK, CONFIG, "clicks", 2, 41)
    assert isinstance(example, TrainingExample)
    assert decode_example(encode_example(example)) == example
    assert (example.example_id, example.target_item, example.history) == ("e7", "i9", ("i1",))
    assert (example.kind, example.weight, example.bought, example.category) == (
        "click", 1.0, None, "3",
    )  # fmt: skip
    assert (example.source_topic, example.source_partition, example.source_offset) == (
        "clicks", 2, 41,
    )  # fmt: skip


def test_bought_is_true_only_when_the_purchase_is_already_known() -> None:
    state = SessionState()
    apply_event(state, click("e1", "i1", T0), CONFIG, "clicks", 0, 0)
    apply_event(state, purchase("p1", "i9", T0 + 1), CONFIG, "purchases", 0, 0)
    example = apply_event(state, CLICK._replace(ts=T0 + 2), CONFIG, "clicks", 0, 1)
    assert isinstance(example, TrainingExample) and example.bought is True


def test_purchase_example_is_a_positive_weighted_by_the_config() -> None:
    state = SessionState()
    example = apply_event(state, purchase("p1", "i9", T0), CONFIG, "purchases", 1, 3)
    assert isinstance(example, TrainingExample)
    assert (example.kind, example.weight, example.bought, example.history) == (
        "purchase", 2.5, True, (),
    )  # fmt: skip
    assert example.example_id == "p1"


def test_a_replayed_event_id_is_a_duplicate_and_changes_nothing() -> None:
    state = SessionState()
    apply_event(state, click("e1", "i1", T0), CONFIG, "clicks", 0, 0)
    before = state.to_json()
    assert apply_event(state, click("e1", "i1", T0), CONFIG, "clicks", 0, 5) is DUPLICATE
    assert state.to_json() == before


def test_a_click_beyond_the_lateness_gets_no_example_and_stays_out_of_the_history() -> None:
    state = SessionState()
    apply_event(state, click("e1", "i1", T0), CONFIG, "clicks", 0, 0)
    late = click("e2", "i2", T0 - LATENESS_MS - 1)
    assert apply_event(state, late, CONFIG, "clicks", 0, 1) is None
    example = apply_event(state, click("e3", "i3", T0 + 1), CONFIG, "clicks", 0, 2)
    assert isinstance(example, TrainingExample) and example.history == ("i1",)


def test_offline_examples_use_the_configured_history_length_and_skip_impressions() -> None:
    events = [click(f"e{n}", f"i{n}", T0 + n) for n in range(6)]
    events.insert(2, Event(event_id="v1", type="impression", session_id="s1", ts=T0, items=("x",)))
    events.append(purchase("p1", "i5", T0 + 9))
    examples = list(examples_from_events(events, CONFIG))
    assert [e.history for e in examples] == [
        ("i0",), ("i0", "i1"), ("i0", "i1", "i2"), ("i1", "i2", "i3"), ("i2", "i3", "i4"),
        ("i3", "i4", "i5"),
    ]  # fmt: skip
    assert examples[-1].weight == CONFIG.purchase_weight
    assert all(
        (e.source_topic, e.source_partition, e.source_offset) == ("", -1, -1) for e in examples
    )


# A step of a random stream: ("new", session, type, item, category, ts delta) or ("dup", pick).
NEW = st.tuples(
    st.just("new"),
    st.integers(0, 3),
    st.sampled_from(("click", "click", "purchase")),
    st.integers(0, 3),
    st.sampled_from((None, None, "c1", "c2")),
    st.integers(-3 * LATENESS_MS, LATENESS_MS),
)
DUP = st.tuples(st.just("dup"), st.integers(0, 1_000))


def build_events(steps: list[tuple]) -> list[Event]:
    """Events from steps: each new event's time is its session's newest time plus a delta
    (negative deltas arrive out of order, some within the lateness, some beyond it)."""
    events: list[Event] = []
    newest: dict[str, int] = {}
    for step in steps:
        if step[0] == "dup":
            if events:
                events.append(events[step[1] % len(events)])
            continue
        _, session_number, kind, item, category, delta = step
        session = f"s{session_number}"
        ts = newest.get(session, T0 + 100_000 * session_number) + delta
        newest[session] = max(newest.get(session, ts), ts)
        events.append(
            Event(
                event_id=f"e{len(events)}", type=kind, session_id=session, ts=ts,
                item_id=f"i{item}", category=category,
            )
        )  # fmt: skip
    return events


def flow_examples(events: list[Event], batch: int) -> list[TrainingExample]:
    """What the flow's shard emits, decoded: events fed in order, one topic per event type."""
    shard = FeatureShard(CONFIG)
    offsets = {"click": 0, "purchase": 0}
    inputs: list[ShardInput] = []
    for event in events:
        topic = f"{event.type}s"
        last = inputs[-1] if inputs else None
        if last is None or last.topic != topic or len(last.events) >= batch:
            last = ShardInput(topic, 0, [], [], [])
            inputs.append(last)
        last.events.append(event)
        last.offsets.append(offsets[event.type])
        last.produce_ms.append(0)
        offsets[event.type] += 1
    out = []
    for start in range(0, len(inputs), 3):  # a few inputs per apply, as a poll brings them
        out.extend(
            decode_example(raw) for _, raw, _ in shard.apply(inputs[start : start + 3]).examples
        )
    return out


def without_source(example: TrainingExample) -> TrainingExample:
    return example._replace(source_topic="", source_partition=-1, source_offset=-1)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.one_of(NEW, NEW, NEW, DUP), max_size=60), batch=st.integers(1, 8))
def test_the_flow_and_offline_training_build_identical_examples(
    steps: list[tuple], batch: int
) -> None:
    events = build_events(steps)
    streamed = flow_examples(events, batch)
    offline = list(examples_from_events(events, CONFIG))
    assert [without_source(e) for e in streamed] == offline
    assert all(e.source_topic in ("clicks", "purchases") and e.source_offset >= 0 for e in streamed)
