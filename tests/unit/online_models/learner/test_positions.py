"""The learner's offsets: resume, pending, publish, adopt, rewind and crashes (pure)."""

from __future__ import annotations

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from online_models.learner.positions import (
    LearnerPositions,
    format_offsets,
    parse_offsets,
)
from streamrec.settings import FlowSettings, LearnerSettings, Settings

TOPIC = "training-examples"
WINDOW = 6  # records per partition in which a repeat is recognised


def fresh(
    every_steps: int = 2, every_s: float = 10.0, snapshot_every: int = 3, now_s: float = 0.0
) -> LearnerPositions:
    return LearnerPositions(
        TOPIC, every_steps, every_s, snapshot_every, WINDOW, last_publish_s=now_s
    )


def read(state: LearnerPositions, partition: int, count: int) -> None:
    start = state.positions.get(partition, 0)
    for offset in range(start, start + count):
        state.record_read(partition, offset, produced_ms=1000 + offset)


def publish(state: LearnerPositions, now_s: float = 0.0) -> dict[str, int]:
    """What the loop does on a successful publish; returns the version's offsets."""
    checkpoint = state.checkpoint()
    state.mark_published(checkpoint, now_s)
    return checkpoint.offsets


# -- offsets in version metadata ---------------------------------------------------------


def test_version_offsets_round_trip_and_other_topics_are_ignored() -> None:
    positions = {0: 5, 3: 12}
    offsets = format_offsets(TOPIC, positions)
    assert offsets == {f"{TOPIC}:0": 5, f"{TOPIC}:3": 12}
    assert parse_offsets(TOPIC, offsets | {"clicks:0": 99, "a:b:1": 7}) == positions


def test_a_topic_name_with_a_colon_still_parses() -> None:
    assert parse_offsets("p:topic", {"p:topic:2": 4}) == {2: 4}


# -- resume --------------------------------------------------------------------------------


def test_resume_takes_the_newer_of_version_and_group_offsets_per_partition() -> None:
    state = fresh()
    version = {f"{TOPIC}:0": 10, f"{TOPIC}:1": 3}
    resume = state.resume([0, 1, 2], version, {0: 7, 1: 8, 2: 4})
    assert resume.positions == {0: 10, 1: 8, 2: 4}
    assert state.positions == state.published == resume.positions
    assert not state.has_pending and state.unpublished() == {}


def test_missing_or_negative_committed_offsets_count_as_zero() -> None:
    state = fresh()
    resume = state.resume([0, 1, 2], {f"{TOPIC}:1": 6}, {0: -1001})
    assert resume.positions == {0: 0, 1: 6, 2: 0}


def test_partitions_not_in_the_topic_are_not_resumed() -> None:
    state = fresh()
    resume = state.resume([0], {f"{TOPIC}:0": 2, f"{TOPIC}:5": 9}, {})
    assert resume.positions == {0: 2}


def test_resume_asks_for_a_commit_only_when_the_group_lags_the_version() -> None:
    assert fresh().resume([0, 1], {f"{TOPIC}:0": 4}, {0: 1, 1: 0}).commit
    assert not fresh().resume([0, 1], {f"{TOPIC}:0": 4}, {0: 4, 1: 0}).commit
    assert not fresh().resume([0, 1], {f"{TOPIC}:0": 1}, {0: 4, 1: -1001}).commit
    assert not fresh().resume([0], {}, {}).commit


# -- reading, pending, publishing ----------------------------------------------------------


def test_reading_advances_positions_and_makes_examples_pending() -> None:
    state = fresh()
    state.resume([0, 1], {}, {0: 5})
    read(state, 0, 3)
    read(state, 1, 2)
    assert state.positions == {0: 8, 1: 2}
    assert state.published == {0: 5, 1: 0}
    assert state.unpublished() == {0: 3, 1: 2}
    assert state.has_pending  # read but unpublished, even without a step
    assert state.pending_produce_ms == [1005, 1006, 1007, 1000, 1001]


def test_a_publication_covers_everything_read_and_settles_it() -> None:
    state = fresh(snapshot_every=3)
    state.resume([0, 1], {}, {})
    read(state, 0, 4)
    read(state, 1, 1)
    state.record_step()
    checkpoint = state.checkpoint()
    assert checkpoint.offsets == {f"{TOPIC}:0": 4, f"{TOPIC}:1": 1}
    assert checkpoint.positions == {0: 4, 1: 1}
    assert not checkpoint.snapshot
    produced = state.mark_published(checkpoint, now_s=5.0)
    assert produced == [1000, 1001, 1002, 1003, 1000]
    # what was committed (checkpoint.positions) == published == positions
    assert checkpoint.positions == state.published == state.positions
    assert not state.has_pending and state.unpublished() == {}
    assert state.steps_since_publish == 0 and state.pending_produce_ms == []
    assert state.last_publish_s == 5.0


def test_every_nth_version_is_a_snapshot() -> None:
    state = fresh(snapshot_every=3)
    state.resume([0], {}, {})
    kinds = []
    for _ in range(7):
        read(state, 0, 1)
        state.record_step()
        checkpoint = state.checkpoint()
        kinds.append(checkpoint.snapshot)
        state.mark_published(checkpoint, 0.0)
    assert kinds == [False, False, True, False, False, True, False]


def test_snapshot_every_one_makes_every_version_a_snapshot() -> None:
    state = fresh(snapshot_every=1)
    state.resume([0], {}, {})
    assert state.checkpoint().snapshot


@pytest.mark.parametrize(
    ("steps", "now_s", "due"),
    [
        (0, 100.0, False),  # nothing learned: never due, however long it has been
        (1, 0.5, False),
        (2, 0.5, True),  # publish_every_steps reached
        (1, 10.0, True),  # publish_every_s reached
        (1, 9.99, False),
    ],
)
def test_publish_is_due_after_k_steps_or_s_seconds(steps: int, now_s: float, due: bool) -> None:
    state = fresh(every_steps=2, every_s=10.0, now_s=0.0)
    for _ in range(steps):
        state.record_step()
    assert state.publish_due(now_s) is due


def test_the_publish_clock_restarts_at_each_publication() -> None:
    state = fresh(every_steps=100, every_s=10.0, now_s=0.0)
    state.record_step()
    publish(state, now_s=12.0)
    state.record_step()
    assert not state.publish_due(21.0)
    assert state.publish_due(22.0)


def test_from_settings_takes_the_schedule_and_the_repeat_window() -> None:
    settings = Settings(
        learner=LearnerSettings(publish_every_steps=7, publish_every_s=1.5, snapshot_every=4),
        flow=FlowSettings(repeat_window=123),
    )
    state = LearnerPositions.from_settings(TOPIC, settings, now_s=3.0)
    assert (state.publish_every_steps, state.publish_every_s, state.snapshot_every) == (7, 1.5, 4)
    assert state.last_publish_s == 3.0
    assert state.repeats.window == 123


# -- repeats ---------------------------------------------------------------------------------


def test_a_repeated_example_is_read_but_not_to_be_learned() -> None:
    state = fresh()
    state.resume([0], {}, {})
    assert state.record_read(0, 0, example_id="a")
    assert not state.record_read(0, 1, example_id="a")  # the flow emitted it again
    assert not state.record_read(0, 2)  # not an example (it did not decode)
    assert state.record_read(0, 3, example_id="b")
    assert state.positions == {0: 4}
    assert state.unpublished() == {0: 4}  # repeats are covered by the next version too


def test_resume_and_rewind_start_an_empty_repeat_window_to_be_rebuilt() -> None:
    state = fresh()
    state.resume([0], {}, {})
    state.record_read(0, 0, example_id="a")
    state.record_step()
    publish(state)
    state.record_read(0, 1, example_id="b")
    state.rewind()
    assert len(state.repeats) == 0 and state.positions == {0: 1}
    start, end = state.repeats.rebuild_range(state.positions[0])
    assert (start, end) == (0, 1)
    state.repeats.is_new(0, 0, "a")  # what the loop reads back from the topic
    assert state.record_read(0, 1, example_id="b")  # read again on the adopted version
    assert not state.record_read(0, 2, example_id="a")


def test_a_fallback_resumes_at_the_loaded_versions_offsets_where_it_has_them() -> None:
    # The current version did not load; an older one did: what only the broken version
    # held (the group's offsets already cover it) is learned again.
    state = fresh()
    resume = state.resume([0, 1], {f"{TOPIC}:0": 4}, {0: 9, 1: 7}, fallback=True)
    assert resume.positions == {0: 4, 1: 7}  # partition 1: the version has no offset
    assert resume.commit  # the group goes back with it
    assert fresh().resume([0], {f"{TOPIC}:0": 4}, {0: 9}).positions == {0: 9}  # no fallback


# -- adopting another version ----------------------------------------------------------------


def test_an_external_promotion_rewinds_to_the_learners_last_publication() -> None:
    state = fresh()
    state.resume([0, 1], {}, {})
    read(state, 0, 5)
    state.record_step()
    publish(state)
    read(state, 0, 3)
    read(state, 1, 2)
    state.record_step()
    positions = state.rewind()
    assert positions == state.positions == {0: 5, 1: 0}  # the 5 unpublished are read again
    assert not state.has_pending
    assert state.steps_since_publish == 0 and state.pending_produce_ms == []


def test_an_adopted_version_restarts_the_snapshot_count() -> None:
    state = fresh(snapshot_every=3)
    state.resume([0], {}, {})
    for _ in range(2):
        state.record_step()
        publish(state)
    assert state.checkpoint().snapshot
    state.rewind()
    assert not state.checkpoint().snapshot


def test_a_refused_publish_drops_the_unpublished_examples_without_rewinding() -> None:
    state = fresh()
    state.resume([0], {}, {0: 10})
    read(state, 0, 4)
    state.record_step()
    positions = state.drop_unpublished()
    assert positions == state.positions == state.published == {0: 14}
    assert not state.has_pending
    assert state.steps_since_publish == 0 and state.pending_produce_ms == []


# -- crashes: a fresh state from what survives (version metadata, group offsets) ---------------


def test_a_crash_before_a_publish_reads_the_unpublished_examples_again() -> None:
    before = fresh()
    before.resume([0], {}, {})
    read(before, 0, 6)
    before.record_step()
    version = publish(before)  # committed too
    committed = dict(before.published)
    read(before, 0, 4)  # learned, then killed: no version, no commit
    after = fresh()
    resume = after.resume([0], version, committed)
    assert resume.positions == {0: 6} and not resume.commit  # offsets 6..9 are read again


def test_a_crash_between_publish_and_commit_resumes_from_the_version() -> None:
    before = fresh()
    before.resume([0, 1], {}, {})
    read(before, 0, 6)
    before.record_step()
    publish(before)
    committed = dict(before.published)
    read(before, 0, 4)
    read(before, 1, 3)
    before.record_step()
    version = before.checkpoint().offsets  # the version is current; killed before the commit
    after = fresh()
    resume = after.resume([0, 1], version, committed)
    assert resume.positions == {0: 10, 1: 3}  # nothing in that version is learned twice
    assert resume.commit  # the loop finishes the interrupted commit


# -- the whole life, generated ---------------------------------------------------------------

PARTITIONS = (0, 1, 2)
Example = tuple[int, int]  # (partition, offset)
# How a new record is made: 0 a new example, k > 0 a repeat of the record k offsets back
# (within the window, as the flow's repeats are).
RECORD_KINDS = st.integers(0, WINDOW)


class LearnerLife(RuleBasedStateMachine):
    """Reads (with repeats), steps, guard skips, publishes, promotions, refused publishes
    and crashes.

    A model of the world outside the learner: the topic (the example id at each offset),
    the registry's current version (its offsets, and whether it is the learner's own), the
    group's committed offsets, and which examples each publication carried. Checked: no
    record and no example id is in the learner's published lineage twice, and everything
    below the published offsets is either published, dropped or a repeat.
    """

    @initialize()
    def start(self) -> None:
        self.topic: dict[int, list[str]] = {p: [] for p in PARTITIONS}
        self.version_offsets: dict[str, int] = {}
        self.committed: dict[int, int] = {}
        self.published_examples: set[Example] = set()  # in the learner's own publications
        self.published_ids: set[str] = set()
        self.dropped: set[Example] = set()  # read, never learned (guard skip, refused publish)
        self.repeated: set[Example] = set()  # read, not learned: a repeat of an earlier one
        self.learned: set[Example] = set()  # learned by the head since its base version
        self.read_unlearned: list[Example] = []  # read in the batch being filled
        self.now_s = 0.0
        self._restart()

    def _restart(self) -> None:
        self.state = fresh(every_steps=3, every_s=5.0, snapshot_every=4, now_s=self.now_s)
        resume = self.state.resume(PARTITIONS, self.version_offsets, self.committed)
        if resume.commit:
            self.committed = dict(resume.positions)
        self.learned = set()
        self.read_unlearned = []
        self._read_again_from(resume.positions)

    def _read_again_from(self, positions: dict[int, int]) -> None:
        """Reading restarts at ``positions``: what lies beyond is read again, not dropped.

        The repeat window is rebuilt from the records before them, as the loop does.
        """
        self.dropped = {(p, o) for p, o in self.dropped if o < positions[p]}
        self.repeated = {(p, o) for p, o in self.repeated if o < positions[p]}
        for partition, position in positions.items():
            start, end = self.state.repeats.rebuild_range(position)
            for offset in range(start, end):
                self.state.repeats.is_new(partition, offset, self.topic[partition][offset])

    def _example_id(self, partition: int, offset: int, kind: int) -> str:
        """The id at ``offset``: the topic's if it was produced, else a new record's."""
        ids = self.topic[partition]
        if offset == len(ids):
            ids.append(ids[offset - kind] if 0 < kind <= offset else f"{partition}-{offset}")
        return ids[offset]

    @rule(partition=st.sampled_from(PARTITIONS), kinds=st.lists(RECORD_KINDS, max_size=5))
    def read_messages(self, partition: int, kinds: list[int]) -> None:
        start = self.state.positions[partition]
        for offset, kind in enumerate(kinds, start):
            example_id = self._example_id(partition, offset, kind)
            if self.state.record_read(partition, offset, example_id=example_id):
                self.read_unlearned.append((partition, offset))
            else:
                self.repeated.add((partition, offset))

    @precondition(lambda self: self.read_unlearned)
    @rule()
    def learn_batch(self) -> None:
        assert not self.published_examples & set(self.read_unlearned), "learned twice"
        self.learned |= set(self.read_unlearned)
        self.read_unlearned = []
        self.state.record_step()

    @precondition(lambda self: self.read_unlearned)
    @rule()
    def guard_skips_batch(self) -> None:
        self.dropped |= set(self.read_unlearned)
        self.read_unlearned = []

    @rule(seconds=st.floats(0.0, 3.0))
    def time_passes(self, seconds: float) -> None:
        self.now_s += seconds

    def _publish(self, commit: bool) -> None:
        self.learn_pending()
        checkpoint = self.state.checkpoint()
        assert not self.published_examples & self.learned, "published twice"
        ids = [self.topic[p][o] for p, o in self.learned]
        assert len(set(ids)) == len(ids), "a repeat learned with its first copy"
        assert not self.published_ids & set(ids), "a repeat of a published example learned"
        self.version_offsets = checkpoint.offsets
        self.published_examples |= self.learned
        self.published_ids |= set(ids)
        if commit:
            self.committed = dict(checkpoint.positions)
            self.state.mark_published(checkpoint, self.now_s)
            self.learned = set()

    def learn_pending(self) -> None:
        if self.read_unlearned:
            self.learn_batch()

    @rule()
    def publish_when_due(self) -> None:
        if self.state.publish_due(self.now_s):
            self._publish(commit=True)

    @rule()
    def publish_pending_on_exit(self) -> None:
        if self.state.has_pending:
            self._publish(commit=True)

    @rule()
    def external_promotion(self) -> None:
        # A fine-tune or rollback: a new current version without learner offsets. Its
        # weights replace the head; the learner's own published examples stay published.
        self.version_offsets = {}
        self.learn_pending()
        self._read_again_from(self.state.rewind())
        self.learned = set()

    @rule()
    def publish_refused(self) -> None:
        self.learn_pending()
        self.dropped |= self.learned
        self.learned = set()
        self.state.drop_unpublished()

    @rule()
    def crash(self) -> None:
        self._restart()

    @rule()
    def crash_between_publish_and_commit(self) -> None:
        self._publish(commit=False)
        self._restart()

    @invariant()
    def everything_read_is_accounted_for(self) -> None:
        published = self.state.published
        below = {(p, o) for p, end in published.items() for o in range(end)}
        assert self.published_examples.isdisjoint(self.dropped | self.repeated)
        assert below <= self.published_examples | self.dropped | self.repeated, "lost"
        assert all(o < published[p] for p, o in self.published_examples)
        assert all(published[p] <= self.state.positions[p] for p in PARTITIONS)
        assert all(self.committed.get(p, 0) <= published[p] for p in PARTITIONS)

    @invariant()
    def pending_means_read_since_the_last_publication(self) -> None:
        published = self.state.published
        skipped = {(p, o) for p, o in self.dropped | self.repeated if o >= published[p]}
        pending = self.learned | set(self.read_unlearned) | skipped
        assert all(o >= published[p] for p, o in pending)
        assert sum(self.state.unpublished().values()) == len(pending)
        assert self.state.has_pending == bool(pending or self.state.steps_since_publish)


LearnerLife.TestCase.settings = hypothesis_settings(max_examples=200, stateful_step_count=40)
test_learner_life = LearnerLife.TestCase
