"""The fine-tune gate: time split and promotion verdict (pure)."""

from __future__ import annotations

import doctest

import online_models.finetune.gate as finetune_gate
from online_models.finetune.gate import judge_candidate, split_replay
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
    assert judge_candidate(60, 40, 100, 0.05, 10).promoted
    tie = judge_candidate(40, 40, 100, 0.0, 10)
    assert not tie.promoted and "does not beat" in tie.reason
    assert not judge_candidate(44, 40, 100, 0.05, 10).promoted


def test_too_few_held_out_examples_are_no_verdict() -> None:
    verdict = judge_candidate(9, 1, 10, 0.0, 100)
    assert not verdict.promoted and "only 10 held-out" in verdict.reason
