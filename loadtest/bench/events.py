"""Micro-benchmark of the event contract: parse+validate cost per event."""

from __future__ import annotations

import statistics
import time

from streamrec.events import Event, EventLimits, encode_event, parse_event
from streamrec.recorded_events import only_events, read_yoochoose
from streamrec.settings import Settings


def run_event_benchmark(settings: Settings, rounds: int = 5) -> dict[str, object]:
    """Median ns per ``parse_event`` over the sample's encoded events."""
    limits = EventLimits.from_settings(settings.events)
    payloads = [encode_event(e) for e in only_events(read_yoochoose(settings.data_dir, limits))]
    per_event_ns = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for payload in payloads:
            parse_event(payload, limits)
        per_event_ns.append((time.perf_counter_ns() - started) / len(payloads))
    valid = sum(isinstance(parse_event(p, limits), Event) for p in payloads)
    median_ns = statistics.median(per_event_ns)
    return {
        "bench": "events",
        "events": len(payloads),
        "valid": valid,
        "rounds": rounds,
        "parse_ns_p50": round(median_ns, 1),
        "events_per_s": round(1e9 / median_ns),
        "mean_payload_bytes": round(sum(map(len, payloads)) / len(payloads), 1),
    }
