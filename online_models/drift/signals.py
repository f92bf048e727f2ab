"""Turn what the monitor reads into detector observations (pure, no I/O).

- ``spread_hits``: a learner signal's (``online_models.learner.signal``) hits spread evenly
  over the batch's examples, so ADWIN sees per-example hit@20 without a within-batch step
  that would look like a change.
- ``InputSignals``: per training example, the reference share of its category and whether
  its target item was never seen before; per finished session, its length.
- ``CtrTracker``: impressions and the clicks that cite their ``request_id`` become one
  clicked / not-clicked outcome per impression, resolved after ``horizon`` impressions.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from streamrec.training_examples import TrainingExample


def spread_hits(hits: int, examples: int) -> Iterator[float]:
    """``examples`` values of 0/1 with ``hits`` ones spaced as evenly as possible."""
    hits = max(0, min(hits, examples))
    for index in range(examples):
        yield float((index + 1) * hits // examples - index * hits // examples)


class InputSignals:
    """Input-distribution observations, with bounded memory.

    The category reference is learned from the first ``reference_size`` sessions and then
    frozen until ``relearn_categories`` (called after a category alert), so a shifted mix
    keeps reading as shifted instead of being absorbed.
    """

    def __init__(
        self, reference_size: int, seen_capacity: int, max_session_len: int, session_idle_ms: int
    ) -> None:
        self.reference_size = max(1, reference_size)
        self.seen_capacity = seen_capacity
        self.max_session_len = max(1, max_session_len)
        self.session_idle_ms = session_idle_ms
        self._categories: Counter[str] = Counter()
        self._reference_total = 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._sessions: OrderedDict[str, tuple[int, int]] = OrderedDict()  # id -> (last ts, n)

    def relearn_categories(self) -> None:
        self._categories.clear()
        self._reference_total = 0

    def category_share(self, example: TrainingExample) -> float | None:
        """The reference share of a new session's category; ``None`` for other examples.

        One value per session (at its first example): a session browses within a category,
        so per-example values are strongly correlated and ADWIN, which assumes independent
        values, would see changes that are not there. ``None`` too while learning the
        reference from the first ``reference_size`` sessions.
        """
        if len(example.history) != 1 or example.kind != "click":
            return None
        category = example.category or ""
        if self._reference_total < self.reference_size:
            self._categories[category] += 1
            self._reference_total += 1
            return None
        return self._categories[category] / self._reference_total

    def never_seen(self, example: TrainingExample) -> float:
        """1.0 when the target item is new to the monitor (LRU memory of item ids)."""
        item = example.target_item
        if item in self._seen:
            self._seen.move_to_end(item)
            return 0.0
        self._seen[item] = None
        if len(self._seen) > self.seen_capacity:
            self._seen.popitem(last=False)
        return 1.0

    def ended_sessions(self, example: TrainingExample) -> list[float]:
        """Lengths (examples, as a share of ``max_session_len``) of sessions that just ended.

        A session ends when it has been idle for ``session_idle_ms`` of event time. One value
        per session, not per example: consecutive examples of a session are correlated,
        finished sessions are close to independent, which is what ADWIN assumes.
        """
        sessions = self._sessions
        _, count = sessions.pop(example.session_id, (0, 0))
        sessions[example.session_id] = (example.ts, count + 1)
        ended: list[float] = []
        horizon = example.ts - self.session_idle_ms
        while sessions:
            session_id, (last_ts, length) = next(iter(sessions.items()))
            if last_ts >= horizon:
                break
            del sessions[session_id]
            ended.append(min(length, self.max_session_len) / self.max_session_len)
        return ended


@dataclass(frozen=True, slots=True)
class ImpressionOutcome:
    """Whether one impression got a click on one of its items; ``offset`` locates it."""

    request_id: str
    clicked: bool
    partition: int
    offset: int


class CtrTracker:
    """Match clicks to impressions by ``request_id``; unclicked ones expire as misses."""

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self._pending: OrderedDict[str, tuple[frozenset[str], int, int]] = OrderedDict()

    def impression(
        self, request_id: str, items: tuple[str, ...], partition: int, offset: int
    ) -> list[ImpressionOutcome]:
        """Register an impression; return the misses it pushes past the horizon."""
        self._pending[request_id] = (frozenset(items), partition, offset)
        expired: list[ImpressionOutcome] = []
        while len(self._pending) > self.horizon:
            old_id, (_, old_partition, old_offset) = self._pending.popitem(last=False)
            expired.append(ImpressionOutcome(old_id, False, old_partition, old_offset))
        return expired

    def click(self, request_id: str | None, item_id: str) -> ImpressionOutcome | None:
        """A click that cites a pending impression and one of its items is a hit."""
        if request_id is None or request_id not in self._pending:
            return None
        items, partition, offset = self._pending[request_id]
        if item_id not in items:
            return None
        del self._pending[request_id]
        return ImpressionOutcome(request_id, True, partition, offset)
