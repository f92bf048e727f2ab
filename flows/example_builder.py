"""Training examples from events: the one way a click or a purchase becomes an example.

``apply_event`` is the per-event step of the feature logic (dedupe, apply to the session,
build the example). The flow's ``FeatureShard`` calls it on the stream; offline training,
evaluation and the benchmarks call it through ``examples_from_events``. Both therefore
emit the same examples for the same events in the same order, with one history length
and one purchase weight (``FeatureConfig``, from ``FlowSettings``).

``example_id`` is the event's ``event_id``: one example per event at most, so the same id
after a replay is a repeat a consumer can drop. ``source`` is where the event was read.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from typing import Final

from flows.event_routing import FEATURE_EVENT_TYPES
from flows.feature_config import FeatureConfig
from flows.session_state import SessionState
from streamrec.events import Event
from streamrec.training_examples import TrainingExample


class Repeat(enum.Enum):
    """What ``apply_event`` returns for an event id its session has already seen."""

    DUPLICATE = "duplicate"


DUPLICATE: Final = Repeat.DUPLICATE

_new_tuple = tuple.__new__


def apply_event(
    state: SessionState,
    event: Event,
    config: FeatureConfig,
    topic: str,
    partition: int,
    offset: int,
) -> TrainingExample | Repeat | None:
    """Apply one click or purchase of ``state``'s session; return its example, if any.

    ``DUPLICATE`` when the event id was seen before (nothing changed). Otherwise the event
    is applied (``SessionState.apply_click`` / ``apply_purchase``: event-time place, late
    clicks beyond ``config.lateness_ms`` kept out of the history) and the result is:

    - a click with a non-empty history: ``kind="click"``, ``weight=1``, ``bought=True`` when
      the session had already bought the item, otherwise None (a later purchase is not
      known yet when the click is emitted);
    - a late click or a session's first click: None;
    - a purchase: ``kind="purchase"``, ``weight=config.purchase_weight``, ``bought=True``,
      ``history`` = the items clicked up to its event time (may be empty).

    Any type other than ``"click"`` is taken for a purchase: callers pass feature events only.
    """
    event_id = event.event_id
    if not state.record(event_id):
        return DUPLICATE
    # Every TrainingExample field, in order (see its definition), built as a plain tuple:
    # this is the flow's hot path, and the NamedTuple's own __new__ costs twice as much.
    if event.type == "click":
        item_id = event.item_id
        history = state.apply_click(
            event.ts, item_id, event.category, config.history_len, config.lateness_ms, event_id
        )
        if not history:
            return None
        bought = True if item_id in state.bought else None
        return _new_tuple(TrainingExample, (
            event_id, event.session_id, history, item_id, event.ts,
            "click", 1.0, bought, event.category, topic, partition, offset, (),
        ))  # fmt: skip
    history = state.apply_purchase(event.ts, event.item_id, config.history_len, config.lateness_ms)
    return _new_tuple(TrainingExample, (
        event_id, event.session_id, history, event.item_id, event.ts,
        "purchase", config.purchase_weight, True, event.category, topic, partition, offset, (),
    ))  # fmt: skip


def examples_from_events(
    events: Iterable[Event], config: FeatureConfig
) -> Iterator[TrainingExample]:
    """The examples the flow emits for ``events`` read in this order, in the same order.

    Offline training and evaluation use it on recorded events. Every session's state is kept
    while the iterator lives (the flow evicts sessions idle for ``config.session_ttl_ms`` of
    event time; that is a shard concern), so the examples are identical to the flow's for
    sessions whose events span less than the session TTL. Events of other types than click
    and purchase are skipped, as the flow dead-letters them. Examples have no source: topic
    ``""``, partition and offset -1.
    """
    sessions: dict[str, SessionState] = {}
    for event in events:
        if event.type not in FEATURE_EVENT_TYPES:
            continue
        state = sessions.get(event.session_id)
        if state is None:
            state = sessions[event.session_id] = SessionState()
        example = apply_event(state, event, config, "", -1, -1)
        if example is not None and example is not DUPLICATE:
            yield example
