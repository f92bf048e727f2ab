"""Where the online learner stands on ``training-examples`` and what it has published.

Plain state, no I/O: the learner loop (``online_models.learner.loop``) reads the consumer,
the registry and the clock, tells ``LearnerPositions`` what happened, and asks it where to
read from, what a publication covers and when one is due.

Per partition of the one topic the learner owns, three offsets (each the *next* offset,
Kafka's convention):

- ``positions``: read so far (learned, or skipped by a guard);
- ``published``: covered by the learner's last publication; the version's metadata
  ``offsets`` and, once ``mark_published`` ran, the group's committed offsets hold the same
  values, so then committed == published == positions;
- the pending examples lie in between: read but not yet in a version. A crash loses them
  from memory only; a restart (``resume``) reads them again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from streamrec.settings import LearnerSettings


def parse_offsets(topic: str, offsets: Mapping[str, int]) -> dict[int, int]:
    """Version metadata ``{"topic:partition": offset}`` -> ``{partition: offset}`` of ``topic``."""
    out: dict[int, int] = {}
    for key, offset in offsets.items():
        name, _, partition = key.rpartition(":")
        if name == topic:
            out[int(partition)] = int(offset)
    return out


def format_offsets(topic: str, positions: Mapping[int, int]) -> dict[str, int]:
    """``{partition: offset}`` -> ``{"topic:partition": offset}``; inverse of ``parse_offsets``."""
    return {f"{topic}:{partition}": offset for partition, offset in positions.items()}


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a (re)started learner reads from, and whether the group offsets must catch up."""

    positions: dict[int, int]
    # True after a crash between a publish and its commit: the group offsets lag the
    # version's, and committing ``positions`` now finishes the interrupted commit.
    commit: bool


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What one publication covers: the same offsets go to the version and the commit."""

    offsets: dict[str, int]  # "topic:partition" -> next offset, for the version metadata
    positions: dict[int, int]  # partition -> next offset, for the group commit
    snapshot: bool  # a full snapshot (every ``snapshot_every``-th version), else a delta


@dataclass(slots=True)
class LearnerPositions:
    """Read, published and pending offsets, and the publication schedule.

    Times are seconds on any monotonic clock, passed in by the caller. Between
    ``checkpoint`` and ``mark_published`` nothing is read (the loop is single-threaded).
    """

    topic: str
    publish_every_steps: int
    publish_every_s: float
    snapshot_every: int
    last_publish_s: float = 0.0
    positions: dict[int, int] = field(default_factory=dict)
    published: dict[int, int] = field(default_factory=dict)
    steps_since_publish: int = 0
    versions_since_snapshot: int = 0
    # Produce timestamps (ms) of the pending messages, for the event-to-weights latency.
    pending_produce_ms: list[int] = field(default_factory=list)

    @classmethod
    def from_settings(
        cls, topic: str, settings: LearnerSettings, now_s: float = 0.0
    ) -> LearnerPositions:
        return cls(
            topic, settings.publish_every_steps, settings.publish_every_s,
            settings.snapshot_every, last_publish_s=now_s,
        )  # fmt: skip

    # -- start ---------------------------------------------------------------------

    def resume(
        self,
        partitions: Iterable[int],
        version_offsets: Mapping[str, int],
        committed: Mapping[int, int],
    ) -> Resume:
        """Start at the newer of the version's and the group's offsets, per partition.

        ``version_offsets`` is the loaded version's metadata (other topics are ignored);
        a partition missing from either side, or with a negative committed offset (Kafka's
        "none"), counts as 0. Nothing is pending afterwards.
        """
        stored = parse_offsets(self.topic, version_offsets)
        group = {p: max(committed.get(p, 0), 0) for p in partitions}
        self.positions = {p: max(stored.get(p, 0), offset) for p, offset in group.items()}
        self._settle()
        return Resume(dict(self.positions), commit=self.positions != group)

    # -- reading and learning ------------------------------------------------------

    def record_read(self, partition: int, offset: int, produced_ms: int = 0) -> None:
        """The message at ``offset`` was read (whether it decodes or is learned or not)."""
        self.positions[partition] = offset + 1
        self.pending_produce_ms.append(produced_ms)

    def record_step(self) -> None:
        """A micro-batch was learned (a guard-skipped batch is not a step)."""
        self.steps_since_publish += 1

    def unpublished(self) -> dict[int, int]:
        """Messages read since the last publication, per partition (only those with some)."""
        counts = {p: o - self.published.get(p, 0) for p, o in self.positions.items()}
        return {p: count for p, count in counts.items() if count > 0}

    @property
    def has_pending(self) -> bool:
        """Anything learned or read that no version covers yet."""
        return self.steps_since_publish > 0 or self.positions != self.published

    # -- publishing ----------------------------------------------------------------

    def publish_due(self, now_s: float) -> bool:
        """A step was taken and ``publish_every_steps`` or ``publish_every_s`` is reached."""
        if not self.steps_since_publish:
            return False
        due_steps = self.steps_since_publish >= self.publish_every_steps
        return due_steps or now_s - self.last_publish_s >= self.publish_every_s

    def checkpoint(self) -> Checkpoint:
        """What the next publication covers: everything read so far."""
        return Checkpoint(
            offsets=format_offsets(self.topic, self.positions),
            positions=dict(self.positions),
            snapshot=self.versions_since_snapshot + 1 >= self.snapshot_every,
        )

    def mark_published(self, checkpoint: Checkpoint, now_s: float) -> list[int]:
        """``checkpoint`` is the current version and its offsets are committed.

        Returns the produce timestamps of the messages it covered (then forgotten).
        """
        self.published = dict(checkpoint.positions)
        self.steps_since_publish = 0
        self.versions_since_snapshot = (
            0 if checkpoint.snapshot else self.versions_since_snapshot + 1
        )
        self.last_publish_s = now_s
        produced, self.pending_produce_ms = self.pending_produce_ms, []
        return produced

    # -- adopting another version --------------------------------------------------

    def rewind(self) -> dict[int, int]:
        """Another version was promoted (a fine-tune, a rollback) and is now loaded.

        Reading goes back to the learner's own last publication, so the examples read
        since are learned again, on top of the adopted version. Returns the positions.
        """
        self.positions = dict(self.published)
        self._settle()
        return dict(self.positions)

    def drop_unpublished(self) -> dict[int, int]:
        """A publish was refused (non-finite weights) and the last version is reloaded.

        The examples read since are dropped (learning them again would only repeat the
        failure): reading continues where it is, and they no longer count as pending.
        A restart before the next publication reads them again. Returns the positions.
        """
        self._settle()
        return dict(self.positions)

    def _settle(self) -> None:
        """Nothing pending; a freshly loaded version starts the snapshot count afresh."""
        self.published = dict(self.positions)
        self.steps_since_publish = 0
        self.versions_since_snapshot = 0
        self.pending_produce_ms = []
