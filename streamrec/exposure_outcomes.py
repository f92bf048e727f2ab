"""What happened after a list was shown: one outcome per impression, closed at a horizon.

The only definition of the impression/outcome join. The flow uses it to turn exposures
into training signal, ``streamrec experiments report`` to count CTR, served HR@K and
conversion per arm, so the two can never disagree on what a click "from a list" is.

An impression opens an outcome. Until ``horizon_ms`` of event time has passed, the
session's events fill it in:

- a click on a shown item is ``clicked``: the impression it cites by ``request_id``, or,
  when it cites none, the session's latest open impression that showed the item;
- the session's first click after the impression, on any item, is ``next_click`` (the
  served hit-rate asks whether it was on the list);
- a purchase of a shown item is ``purchased``.

Event time drives closing: the join's watermark is the largest ``ts`` it has seen, and an
outcome closes once the watermark passes its impression's ``ts + horizon_ms`` (events
out of order by less than the horizon still count). ``max_open`` bounds memory: beyond
it the oldest outcomes close early. Duplicates (same ``event_id``, as replays and
at-least-once delivery produce) are the caller's to drop; an impression seen twice keeps
the first. ``state`` and ``restore`` carry the open outcomes and the watermark through a
restart (the flow keeps them in its recovery snapshots), so each closes exactly once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import astuple, dataclass, field, replace
from typing import Any

from streamrec.events import Event
from streamrec.proportions import rate


@dataclass(frozen=True, slots=True)
class ExposureOutcome:
    """One impression and what its session did about it within the horizon."""

    request_id: str
    session_id: str
    ts: int
    items: tuple[str, ...]
    model_version: int | None
    arm: str | None
    explored: tuple[int, ...] = ()
    clicked: tuple[str, ...] = ()
    purchased: tuple[str, ...] = ()
    next_click: str | None = None

    @property
    def was_clicked(self) -> bool:
        """A click on one of the shown items (the CTR numerator)."""
        return bool(self.clicked)

    @property
    def served_hit(self) -> bool:
        """The session's next click was on the list (served HR@K, K = len(items))."""
        return self.next_click is not None and self.next_click in self.items

    @property
    def converted(self) -> bool:
        """A shown item was bought within the horizon."""
        return bool(self.purchased)

    @property
    def ignored(self) -> tuple[str, ...]:
        """Shown items that got no click: the exposure's negatives."""
        clicked = set(self.clicked)
        return tuple(item for item in self.items if item not in clicked)


@dataclass(slots=True)
class ArmTally:
    """Counts of one arm's closed outcomes: the one definition of an arm's CTR, served HR
    and conversion, shared by ``streamrec experiments report`` and the canary watch.

    - CTR: impressions with a click on a shown item, of all impressions;
    - served HR: impressions whose session's next click was on the list, of those
      followed by any click (``followed``);
    - conversion: impressions with a shown item bought, of all impressions.
    """

    impressions: int = 0
    clicked: int = 0
    followed: int = 0
    hits: int = 0
    converted: int = 0

    def add(self, outcome: ExposureOutcome) -> None:
        self.impressions += 1
        self.clicked += outcome.was_clicked
        self.followed += outcome.next_click is not None
        self.hits += outcome.served_hit
        self.converted += outcome.converted

    def counts(self, metric: str) -> tuple[int, int]:
        """(successes, trials) of ``metric``: ``ctr``, ``served_hr`` or ``conversion``."""
        return {
            "ctr": (self.clicked, self.impressions),
            "served_hr": (self.hits, self.followed),
            "conversion": (self.converted, self.impressions),
        }[metric]

    def rate(self, metric: str) -> float:
        """``metric`` as a share (NaN without trials)."""
        return rate(*self.counts(metric))


@dataclass(slots=True)
class ExposureJoin:
    """Open outcomes by request id, closed by event time (see module docstring)."""

    horizon_ms: int
    max_open: int = 100_000
    watermark: int = 0
    _open: OrderedDict[str, ExposureOutcome] = field(default_factory=OrderedDict)
    _by_session: dict[str, list[str]] = field(default_factory=dict)

    def observe(self, event: Event) -> list[ExposureOutcome]:
        """Apply one event; return the outcomes it closes (oldest first).

        Outcomes past their horizon at the event's time close before it is applied: a
        click more than ``horizon_ms`` after an impression is not its outcome.
        """
        if event.ts > self.watermark:
            self.watermark = event.ts
        closed = self._close(self.watermark - self.horizon_ms)
        if event.type == "impression":
            self._open_impression(event)
        elif event.type == "click":
            self._click(event)
        elif event.type == "purchase":
            self._purchase(event)
        closed.extend(self._close(self.watermark - self.horizon_ms))  # over max_open
        return closed

    def advance(self, ts: int) -> list[ExposureOutcome]:
        """Move the watermark to ``ts`` (never back) and return the outcomes that closes:
        for a live reader whose clock must move on while no event arrives."""
        if ts > self.watermark:
            self.watermark = ts
        return self._close(self.watermark - self.horizon_ms)

    def flush(self) -> list[ExposureOutcome]:
        """Close every open outcome (the end of a bounded replay)."""
        return self._close(None)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def state(self) -> list[Any]:
        """The watermark and the open outcomes, oldest first, as JSON-ready lists."""
        return [self.watermark, [astuple(outcome) for outcome in self._open.values()]]

    @classmethod
    def restore(cls, horizon_ms: int, max_open: int, state: list[Any] | None) -> ExposureJoin:
        """A join from ``state()`` (or empty when None), with the given bounds."""
        join = cls(horizon_ms, max_open)
        if state is None:
            return join
        join.watermark, outcomes = state
        for fields in outcomes:
            rid, sid, ts, items, version, arm, explored, clicked, purchased, next_click = fields
            join._open[rid] = ExposureOutcome(
                rid, sid, ts, tuple(items), version, arm, tuple(explored),
                tuple(clicked), tuple(purchased), next_click,
            )  # fmt: skip
            join._by_session.setdefault(sid, []).append(rid)
        return join

    def _open_impression(self, event: Event) -> None:
        request_id = event.request_id or event.event_id
        if request_id in self._open:
            return
        self._open[request_id] = ExposureOutcome(
            request_id=request_id,
            session_id=event.session_id,
            ts=event.ts,
            items=event.items,
            model_version=event.model_version,
            arm=event.arm,
            explored=event.explored,
        )
        self._by_session.setdefault(event.session_id, []).append(request_id)

    def _session_open(self, session_id: str, ts: int) -> list[str]:
        """The session's open request ids shown at or before ``ts``, newest last."""
        return [rid for rid in self._by_session.get(session_id, ()) if self._open[rid].ts <= ts]

    def _click(self, event: Event) -> None:
        item = event.item_id
        shown_before = self._session_open(event.session_id, event.ts)
        for rid in shown_before:
            outcome = self._open[rid]
            if outcome.next_click is None:
                self._open[rid] = outcome = replace(outcome, next_click=item)
        cited = event.request_id
        if cited is not None and cited in self._open:
            target = cited
        else:
            target = next(
                (rid for rid in reversed(shown_before) if item in self._open[rid].items), None
            )
        if target is None:
            return
        outcome = self._open[target]
        if item in outcome.items and item not in outcome.clicked:
            self._open[target] = replace(outcome, clicked=(*outcome.clicked, item))

    def _purchase(self, event: Event) -> None:
        item = event.item_id
        for rid in self._session_open(event.session_id, event.ts):
            outcome = self._open[rid]
            if item in outcome.items and item not in outcome.purchased:
                self._open[rid] = replace(outcome, purchased=(*outcome.purchased, item))

    def _close(self, before_ts: int | None) -> list[ExposureOutcome]:
        closed: list[ExposureOutcome] = []
        while self._open:
            rid, outcome = next(iter(self._open.items()))
            over_limit = len(self._open) > self.max_open
            if not over_limit and before_ts is not None and outcome.ts >= before_ts:
                break
            del self._open[rid]
            session = self._by_session[outcome.session_id]
            session.remove(rid)
            if not session:
                del self._by_session[outcome.session_id]
            closed.append(outcome)
        return closed
