"""The fine-tune gate: time split and promotion verdict (pure)."""

from __future__ import annotations

import doctest

import online_models.finetune.gate as finetune_gate
from online_models.finetune.gate import (
    LearnedBatch,
    base_fallback_note,
    judge_candidate,
    prequential_hit_rate,
    split_replay,
    unseen_version,
)
from streamrec.training_examples import TrainingExample


def test_module_examples_run() -> None:
    assert doctest.testmod(finetune_gate).failed == 0


def test_holdout_is_the_most_recent_examples() -> None:
    examples = [TrainingExample(f"e{i}", "s", ("a",), "b", ts=1000 - i) for i in range(10)]
    train, holdout = split_replay(examples, 0.2)
    assert len(train) == 8 and len(holdout) == 2
    assert max(e.ts for e in train) < min(e.ts for e in holdout)
    assert {e.example_id for e in holdout} == {"e0", "e1"}


def test_empty_replay_splits_into_nothing() -> None:
    assert split_replay([], 0.2) == ([], [])


def test_candidate_must_beat_serving_by_the_margin() -> None:
    assert judge_candidate(0.6, 0.4, 100, 0.05, 10).promoted
    tie = judge_candidate(0.4, 0.4, 100, 0.0, 10)
    assert not tie.promoted and "does not beat" in tie.reason
    assert not judge_candidate(0.44, 0.4, 100, 0.05, 10).promoted


def test_too_few_held_out_examples_are_no_verdict() -> None:
    verdict = judge_candidate(0.9, 0.1, 10, 0.0, 100)
    assert not verdict.promoted and "only 10 held-out" in verdict.reason


def test_serving_side_is_the_learners_hit_rate_over_the_held_out_span_only() -> None:
    batches = [
        LearnedBatch(event_ts_ms=900, examples=100, hits=90, model_version=1),  # trained on
        LearnedBatch(event_ts_ms=1000, examples=100, hits=30, model_version=1),
        LearnedBatch(event_ts_ms=1500, examples=50, hits=30, model_version=2),
        LearnedBatch(event_ts_ms=2001, examples=100, hits=100, model_version=2),  # after it
    ]
    assert prequential_hit_rate(batches, 1000, 2000) == (60 / 150, 150)


def test_no_learner_batch_in_the_span_gives_no_serving_rate() -> None:
    rate, examples = prequential_hit_rate([LearnedBatch(10, 100, 5, 1)], 1000, 2000)
    assert examples == 0 and rate != rate  # NaN


def test_candidate_base_is_the_version_that_ranked_the_first_held_out_batch() -> None:
    # The learner's signals in the order it wrote them: versions 3 and 4 built on before
    # the held-out span (from ts 1000), 5 ranked its first batch, 6 and 7 had learned it.
    batches = [
        LearnedBatch(event_ts_ms=800, examples=64, hits=10, model_version=3),
        LearnedBatch(event_ts_ms=999, examples=64, hits=10, model_version=4),
        LearnedBatch(event_ts_ms=1000, examples=64, hits=10, model_version=5),
        LearnedBatch(event_ts_ms=1400, examples=64, hits=10, model_version=6),
        LearnedBatch(event_ts_ms=1900, examples=64, hits=10, model_version=7),
    ]
    assert unseen_version(batches, first_ts_ms=1000) == 5
    assert unseen_version(batches, first_ts_ms=1001) == 6


def test_the_first_written_batch_decides_when_event_times_interleave() -> None:
    # Partitions interleave: a later batch can carry older examples; the version that ranked
    # the first batch reaching the span had learned none of it, a later one may have.
    batches = [
        LearnedBatch(event_ts_ms=1200, examples=64, hits=10, model_version=8),
        LearnedBatch(event_ts_ms=1050, examples=64, hits=10, model_version=9),
    ]
    assert unseen_version(batches, first_ts_ms=1000) == 8


def test_no_batch_reaching_the_held_out_span_names_no_version() -> None:
    assert unseen_version([LearnedBatch(999, 64, 10, 3)], first_ts_ms=1000) is None
    assert unseen_version([], first_ts_ms=1000) is None


def test_a_fallback_note_says_the_comparison_is_not_clean_and_why() -> None:
    gone = base_fallback_note("verdict", "version_not_loadable", 12)
    assert "current weights" in gone and "version 12" in gone and "no longer loads" in gone
    assert "no learner signal" in base_fallback_note("verdict", "no_learner_signal", None)
    assert base_fallback_note("verdict", "", 12) == "verdict"  # a clean start adds nothing
