"""Adaptive micro-batching of model scoring across concurrent requests of one worker.

Encoding a session costs mostly fixed overhead (an encoder pass costs about the same for
one session as for eight) and a batch reads the item table once for all its sessions (one
matrix product), so ranking the requests that are in the worker at the same time together
multiplies throughput. A request gets back only its top K (``Scorer.top_k_batch``), never
a catalog-sized row. The batcher never waits for traffic that is not there: it counts the requests
that have started but not yet asked for scores (``in_flight``, typically waiting on
Redis) and flushes as soon as none is left, when ``max_batch`` is reached, or after
``max_wait_s``. A lone request is therefore scored at once, with no added delay.

Each batch is scored with the snapshot its requests read, so a swap between two requests
never mixes versions inside an answer. Everything runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import Histogram

from serving.hot_swap import ModelSnapshot

# The best rows of a snapshot's items and their scores, best first.
TopK = tuple[np.ndarray, np.ndarray]


@dataclass(slots=True)
class _Waiting:
    snapshot: ModelSnapshot
    history: Sequence[str]
    k: int
    excluded: np.ndarray | None
    candidates: np.ndarray | None
    future: asyncio.Future[TopK]


class ScoreBatcher:
    """Collects ``top_k`` calls and runs them through ``top_k_batch`` together."""

    def __init__(
        self, max_batch: int = 16, max_wait_s: float = 0.002, sizes: Histogram | None = None
    ) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.sizes = sizes
        self.in_flight = 0
        self._waiting: list[_Waiting] = []
        self._timer: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        """A request started that may ask for scores (call ``end`` if it will not)."""
        self.in_flight += 1

    def end(self) -> None:
        """A request that called ``begin`` will not ask for scores after all."""
        self.in_flight -= 1
        if self._waiting and self.in_flight <= 0:
            self._flush()

    async def top_k(
        self,
        snapshot: ModelSnapshot,
        history: Sequence[str],
        k: int,
        excluded: np.ndarray | None = None,
        candidates: np.ndarray | None = None,
    ) -> TopK:
        """The ``k`` best rows of ``snapshot`` for ``history`` and their scores, best first.

        ``excluded`` rows are left out; ``candidates``, when given, are the only rows
        allowed (see ``Scorer.top_k_batch``).
        """
        self.in_flight -= 1
        future: asyncio.Future[TopK] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(snapshot, history, k, excluded, candidates, future))
        if self.in_flight <= 0 or len(self._waiting) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, []
        groups: dict[int, list[_Waiting]] = {}
        for entry in waiting:
            groups.setdefault(id(entry.snapshot), []).append(entry)
        for group in groups.values():
            self._score_group(group)

    def _score_group(self, group: list[_Waiting]) -> None:
        scorer = group[0].snapshot.scorer
        try:
            answers = scorer.top_k_batch(
                [entry.history for entry in group],
                max(entry.k for entry in group),
                [entry.excluded for entry in group],
                [entry.candidates for entry in group],
            )
        except Exception as exc:  # a scoring bug fails these requests, not the worker
            for entry in group:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        if self.sizes is not None:
            self.sizes.observe(len(group))
        for entry, (rows, scores) in zip(group, answers, strict=True):
            if not entry.future.done():
                entry.future.set_result((rows[: entry.k], scores[: entry.k]))
