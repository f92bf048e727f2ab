"""The state of one shard of sessions: applies events, yields what to write and to emit.

``FeatureShard.apply`` is the whole feature logic of the flow, free of Kafka, Redis and
Bytewax: it deduplicates, orders, updates the sessions and builds training examples (one
``example_builder.apply_event`` per event, the very step offline training uses), emits
popularity events, and returns the *absolute* hash of every session it changed, so
writing the output twice (a replay after a crash) leaves the same Redis state.

Impressions go through the shard's ``ExposureJoin`` with the sessions' clicks and
purchases; each outcome it closes becomes an exposure example (``exposure_examples.py``)
and goes on to the exposure counts. The join's open outcomes are part of the snapshot, so
an outcome closes once across a restart. An impression whose session is known is
deduplicated by event id like any event (an impression-only session is not kept: the
join drops a repeat while the outcome is open); one older than the join's watermark by
more than the horizon is late (its outcome could no longer be seen) and is dropped and
counted. Impressions do not move the event time that drives eviction.

Idle sessions leave the state once event time has moved ``session_ttl`` past their last
event (Redis expires their hash on its own clock). Event time here is the *slowest* input
partition's newest event (a watermark per topic partition, then the minimum): the
purchases stream is sparse and, in a backlog, read far ahead of the clicks, so the newest
event overall would evict sessions whose clicks are still to come. Nothing is evicted
before every input topic has been seen. An input partition that stops receiving events
holds eviction back (memory grows; features stay right). A
duplicate of an evicted session's event would start a new session; at a 7-day TTL that
is far beyond any producer retry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from flows.dead_letter import encode_dead_letter
from flows.event_routing import ShardInput
from flows.example_builder import DUPLICATE, apply_event
from flows.exposure_examples import exposure_example
from flows.feature_config import FeatureConfig
from flows.session_state import NO_TS, SessionState
from streamrec.exposure_outcomes import ExposureJoin, ExposureOutcome
from streamrec.training_examples import encode_example

SWEEPS_PER_TTL = 8


@dataclass(slots=True)
class ShardOutput:
    """What one ``apply`` produced: writes for Redis, messages for Kafka, counts for metrics.

    ``sessions`` holds only the sessions changed by this batch, each as its full hash (the
    values in ``streamrec.session_features.FIELDS`` order).
    ``dead_letters`` are ``(key, value)`` message bytes; ``examples`` are ``(key, value,
    timestamp_ms)`` where the timestamp is the source event's own Kafka timestamp, so the
    learner can measure event-to-weights latency from the moment the click was produced.
    ``popularity`` lists ``(item_id, ts_ms, weight)`` of the applied events;
    ``item_categories`` maps clicked items to the category their click carried (serving's
    category filter reads it).
    ``produce_ms`` and ``read_ms`` hold, per input event, its Kafka produce time and when
    the flow read it (for freshness). ``exposures`` are the outcomes closed by this batch
    (their examples are in ``examples``).
    """

    sessions: dict[str, list[bytes]] = field(default_factory=dict)
    examples: list[tuple[bytes, bytes, int]] = field(default_factory=list)
    dead_letters: list[tuple[bytes, bytes]] = field(default_factory=list)
    popularity: list[tuple[str, int, float]] = field(default_factory=list)
    item_categories: dict[str, str] = field(default_factory=dict)
    exposures: list[ExposureOutcome] = field(default_factory=list)
    produce_ms: list[int] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)
    events: int = 0
    duplicates: int = 0
    late: int = 0
    evicted: int = 0


class FeatureShard:
    """Sessions of one shard, keyed by session id."""

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.sessions: dict[str, SessionState] = {}
        self.encoded: dict[str, bytes] = {}
        self.dirty: set[str] = set()
        self.source_watermarks: dict[tuple[str, int], int] = {}
        self.next_sweep_ms = NO_TS
        self.exposures = ExposureJoin(config.exposure_horizon_ms, config.exposure_max_open)
        # The Redis marker under which every session of this shard was last written in full
        # (flows/redis_resync.py); None before the first time.
        self.synced: str | None = None

    def apply(self, inputs: list[ShardInput]) -> ShardOutput:
        """Apply the inputs in order; return the changed sessions and what to emit."""
        config = self.config
        purchase_weight = config.purchase_weight
        sessions = self.sessions
        out = ShardOutput()
        examples = out.examples
        popularity = out.popularity
        item_categories = out.item_categories
        changed: dict[str, SessionState] = {}
        duplicates = late = 0
        join = self.exposures
        outcomes_open = join.open_count  # changes only in join.observe
        horizon_ms = config.exposure_horizon_ms
        for shard_input in inputs:
            topic, partition = shard_input.topic, shard_input.partition
            newest = NO_TS
            out.events += len(shard_input.events)
            out.produce_ms.extend(shard_input.produce_ms)
            out.read_ms.extend([shard_input.read_ms] * len(shard_input.produce_ms))
            for letter in shard_input.dead_letters:
                out.dead_letters.append((letter.key, encode_dead_letter(letter)))
            for event, offset, produced_ms in zip(
                shard_input.events, shard_input.offsets, shard_input.produce_ms, strict=True
            ):
                session_id = event.session_id
                state = sessions.get(session_id)
                kind, ts = event.type, event.ts
                if kind == "impression":
                    if state is not None and not state.record(event.event_id):
                        duplicates += 1
                        continue
                    if state is not None:
                        self.dirty.add(session_id)
                    if ts < join.watermark - horizon_ms:
                        late += 1
                        continue
                    self._close_exposures(join.observe(event), out, topic, partition, offset,
                                          produced_ms)  # fmt: skip
                    outcomes_open = join.open_count
                    continue
                if state is None:
                    state = sessions[session_id] = SessionState()
                late_before = state.late
                example = apply_event(state, event, config, topic, partition, offset)
                if example is DUPLICATE:
                    duplicates += 1
                    continue
                if example is not None:
                    examples.append((session_id.encode(), encode_example(example), produced_ms))
                if outcomes_open:
                    closed = join.observe(event)
                    outcomes_open = join.open_count
                    if closed:
                        self._close_exposures(closed, out, topic, partition, offset, produced_ms)
                elif ts > join.watermark:  # nothing open: only event time moves
                    join.watermark = ts
                if ts > newest:
                    newest = ts
                item_id = event.item_id
                if kind == "click":
                    popularity.append((item_id, ts, 1.0))
                    if event.category:
                        item_categories[item_id] = event.category
                else:
                    popularity.append((item_id, ts, purchase_weight))
                late += state.late - late_before
                changed[session_id] = state
            source = (topic, partition)
            if newest > self.source_watermarks.get(source, NO_TS):
                self.source_watermarks[source] = newest
        out.duplicates, out.late = duplicates, late
        self.dirty.update(changed)
        with_events = config.click_events
        out.sessions = {sid: state.hash_values(with_events) for sid, state in changed.items()}
        watermark = self.watermark_ms()
        if watermark != NO_TS and watermark >= self.next_sweep_ms:
            out.evicted = self._evict_idle(watermark)
        return out

    def _close_exposures(
        self,
        closed: list[ExposureOutcome],
        out: ShardOutput,
        topic: str,
        partition: int,
        offset: int,
        produced_ms: int,
    ) -> None:
        """Emit the examples of outcomes closed by the event at (topic, partition, offset)."""
        sessions = self.sessions
        for outcome in closed:
            session_id = outcome.session_id
            state = sessions.get(session_id)  # None once evicted
            history = () if state is None else state.items_until(outcome.ts)
            example = exposure_example(outcome, history, topic, partition, offset)
            out.examples.append((session_id.encode(), encode_example(example), produced_ms))
        out.exposures.extend(closed)

    def full_state(self, chunk: int) -> list[ShardOutput]:
        """Every live session's full hash, ``chunk`` sessions per output (a re-sync)."""
        sessions = self.sessions
        ids = list(sessions)
        return [
            ShardOutput(
                sessions={
                    sid: sessions[sid].hash_values(self.config.click_events)
                    for sid in ids[start : start + chunk]
                }
            )
            for start in range(0, len(ids), chunk)
        ]

    def watermark_ms(self) -> int:
        """Event time every input partition of this shard has reached (NO_TS before all
        ``input_topics`` have been seen)."""
        if len({topic for topic, _ in self.source_watermarks}) < self.config.input_topics:
            return NO_TS
        return min(self.source_watermarks.values())

    def _evict_idle(self, watermark: int) -> int:
        """Forget sessions idle for a TTL of event time; schedule the next sweep."""
        ttl_ms = self.config.session_ttl_ms
        horizon = watermark - ttl_ms
        idle = [sid for sid, state in self.sessions.items() if state.last_ts < horizon]
        for session_id in idle:
            del self.sessions[session_id]
            self.encoded.pop(session_id, None)
            self.dirty.discard(session_id)
        self.next_sweep_ms = watermark + ttl_ms // SWEEPS_PER_TTL
        return len(idle)

    def snapshot(self) -> bytes:
        """An immutable copy of the state (bytes, so later updates cannot leak in).

        Sessions are encoded (JSON) one by one and the bytes kept, so a snapshot re-encodes only
        the sessions changed since the previous one: its cost follows the traffic of one
        snapshot interval, not the size of the state (a week of sessions).
        """
        sessions, encoded = self.sessions, self.encoded
        for session_id in self.dirty:
            encoded[session_id] = sessions[session_id].to_json()
        self.dirty.clear()
        return orjson.dumps(
            {
                "sessions": {sid: orjson.Fragment(raw) for sid, raw in encoded.items()},
                "watermarks": [[t, p, ts] for (t, p), ts in self.source_watermarks.items()],
                "next_sweep_ms": self.next_sweep_ms,
                "synced": self.synced,
                "exposures": self.exposures.state(),
            }
        )

    @classmethod
    def restore(cls, config: FeatureConfig, snapshot: bytes | None) -> FeatureShard:
        """A shard from a ``snapshot`` (or empty when None)."""
        shard = cls(config)
        if snapshot is not None:
            data = orjson.loads(snapshot)
            shard.encoded = {sid: orjson.dumps(raw) for sid, raw in data["sessions"].items()}
            shard.sessions = {
                sid: SessionState.from_json(raw) for sid, raw in shard.encoded.items()
            }
            shard.source_watermarks = {(t, p): ts for t, p, ts in data["watermarks"]}
            shard.next_sweep_ms = data["next_sweep_ms"]
            shard.synced = data.get("synced")  # absent in snapshots made before re-syncs
            shard.exposures = ExposureJoin.restore(
                config.exposure_horizon_ms, config.exposure_max_open, data.get("exposures")
            )
        return shard
