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

Repeats: the flow delivers examples at least once, so ``record_read`` also says whether a
record is a repeat of an example read before (``streamrec.example_dedupe``); a repeat is
read (its offset is covered) but not learned. The repeat window holds the records before
the read positions: after ``resume`` and ``rewind`` it starts empty and the loop rebuilds
it from the topic, so a restarted or rewound learner drops exactly what it would have
dropped had it never stopped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from streamrec.example_dedupe import ExampleDedupe
from streamrec.settings import Settings


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
    repeat_window: int  # records per partition (``FlowSettings.repeat_window``)
    last_publish_s: float = 0.0
    positions: dict[int, int] = field(default_factory=dict)
    published: dict[int, int] = field(default_factory=dict)
    steps_since_publish: int = 0
    versions_since_snapshot: int = 0
    # Produce timestamps (ms) of the pending messages, for the event-to-weights latency.
    pending_produce_ms: list[int] = field(default_factory=list)
    repeats: ExampleDedupe = field(init=False)

    def __post_init__(self) -> None:
        self.repeats = ExampleDedupe(self.repeat_window)

    @classmethod
    def from_settings(cls, topic: str, settings: Settings, now_s: float = 0.0) -> LearnerPositions:
        learner = settings.learner
        return cls(
            topic, learner.publish_every_steps, learner.publish_every_s, learner.snapshot_every,
            settings.flow.repeat_window, last_publish_s=now_s,
        )  # fmt: skip

    # -- start ---------------------------------------------------------------------

    def resume(
        self,
        partitions: Iterable[int],
        version_offsets: Mapping[str, int],
        committed: Mapping[int, int],
        fallback: bool = False,
    ) -> Resume:
        """Start at the newer of the version's and the group's offsets, per partition.

        ``version_offsets`` is the loaded version's metadata (other topics are ignored);
        a partition missing from either side, or with a negative committed offset (Kafka's
        "none"), counts as 0. With ``fallback`` (the current version did not load and an
        older one of its lineage was loaded instead) the version's offsets win where it has
        them: the group's may cover examples only the broken version held, which are then
        learned again. Nothing is pending afterwards; the repeat window is to be rebuilt.
        """
        stored = parse_offsets(self.topic, version_offsets)
        group = {p: max(committed.get(p, 0), 0) for p in partitions}
        self.positions = {
            p: stored[p] if fallback and p in stored else max(stored.get(p, 0), offset)
            for p, offset in group.items()
        }
        self._settle()
        self.repeats = ExampleDedupe(self.repeat_window)
        return Resume(dict(self.positions), commit=self.positions != group)

    # -- reading and learning ------------------------------------------------------

    def record_read(
        self, partition: int, offset: int, produced_ms: int = 0, example_id: str | None = None
    ) -> bool:
        """The message at ``offset`` was read; whether it is an example to learn.

        ``example_id`` is None for a message that is not an example (it does not decode);
        True means it is one and not a repeat of an example read before.
        """
        self.positions[partition] = offset + 1
        self.pending_produce_ms.append(produced_ms)
        return example_id is not None and self.repeats.is_new(partition, offset, example_id)

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

        ``now_s`` is when the checkpoint was taken: ``publish_every_s`` spaces what the
        versions hold, not when their writes ended (counting from the end added a
        publication's own time to the spacing, and often one more step to every wait).
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
        since are learned again, on top of the adopted version; the repeat window is to be
        rebuilt. Returns the positions.
        """
        self.positions = dict(self.published)
        self._settle()
        self.repeats = ExampleDedupe(self.repeat_window)
        return dict(self.positions)

    def restart_partition(self, partition: int) -> None:
        """``partition`` was emptied under the learner (the broker restarted empty): read it
        again from its beginning. What it holds now is all new; the next publication
        records the new offsets (a restart before it finds the topic emptied again)."""
        self.positions[partition] = 0
        self.repeats.forget(partition)

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
