"""Training examples read from recorded traffic (files in, examples out).

Sources are YooChoose directories, event JSON-lines files, or explicit YooChoose
clicks/buys file pairs; all go through ``streamrec.recorded_events`` and are merged in
event-time order before examples are built by the flow's own builder
(``flows.example_builder.examples_from_events``, with the ``FlowSettings`` history length and
purchase weight).
"""

from __future__ import annotations

import heapq
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from flows.example_builder import examples_from_events
from flows.feature_config import FeatureConfig
from streamrec.events import Event, EventLimits
from streamrec.recorded_events import (
    BUYS_FILE,
    CLICKS_FILE,
    only_events,
    read_recorded,
    read_yoochoose,
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


def yoochoose_file_events(
    clicks: Sequence[Path], buys: Sequence[Path], limits: EventLimits
) -> Iterator[Event]:
    """Events of YooChoose clicks/buys files given by path, merged by time.

    Files are paired in order (a missing buys file is fine); each pair is read through
    ``read_yoochoose`` from a directory of links with the standard names.
    """
    streams = []
    for position, clicks_path in enumerate(clicks):
        folder = Path(tempfile.mkdtemp(prefix="streamrec-yoochoose-"))
        suffix = ".gz" if clicks_path.suffix == ".gz" else ""
        (folder / (CLICKS_FILE + suffix)).symlink_to(clicks_path.resolve())
        if position < len(buys):
            buys_suffix = ".gz" if buys[position].suffix == ".gz" else ""
            (folder / (BUYS_FILE + buys_suffix)).symlink_to(buys[position].resolve())
        else:
            (folder / BUYS_FILE).write_text("")
        streams.append(only_events(read_yoochoose(folder, limits)))
    return heapq.merge(*streams, key=lambda event: event.ts)
