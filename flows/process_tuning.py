"""Garbage-collector settings for the flow process, which holds a large, slowly changing state.

The flow keeps hundreds of thousands of long-lived containers (sessions) and creates no
reference cycles of its own. With CPython's default threshold (a young-generation
collection every 700 net allocations) the collector keeps promoting and rescanning them:
measured on 200k sample events, 1.6 s of collector time with pauses up to 120 ms, against
0.05 s (longest pause 26 ms) with ``tune_flow_process``. Freezing the survivors after each
snapshot (``gc.freeze``) measured no better and would keep cyclic garbage forever, so it
is not done.
"""

from __future__ import annotations

import gc

GC_YOUNG_THRESHOLD = 50_000


def tune_flow_process() -> None:
    """Collect the youngest generation every 50k net allocations instead of every 700."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
