"""Training examples read from recorded traffic (files in, examples out).

Sources are anything ``streamrec.recorded_events`` reads (YooChoose directories, event
JSON-lines files, delimited logs through a mapping); they are merged in event-time order
before examples are built by the flow's own builder
(``flows.example_builder.examples_from_events``, with the ``FlowSettings`` history length
and purchase weight).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from pathlib import Path

from flows.example_builder import examples_from_events
from flows.feature_config import FeatureConfig
from streamrec.events import Event, EventLimits
from streamrec.recorded_events import (
    only_events,
    read_recorded,
)
from streamrec.settings import Settings
from streamrec.training_examples import TrainingExample


def load_examples(
    settings: Settings, sources: Sequence[Path], before_ms: int | None = None
) -> list[TrainingExample]:
    """Examples from every source, in time order, optionally only before ``before_ms``."""
    limits = EventLimits.from_settings(settings.events)
    streams = [only_events(read_recorded(source, limits)) for source in sources]
    events: Iterator[Event] = heapq.merge(*streams, key=lambda event: event.ts)
    if before_ms is not None:
        events = (event for event in events if event.ts < before_ms)
    return list(examples_from_events(events, FeatureConfig.from_settings(settings.flow)))
