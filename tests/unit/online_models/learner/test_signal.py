"""The learner's signal entry: one contract for the learner, the drift monitor and fine-tunes."""

from __future__ import annotations

import math

import pytest

from online_models.learner.signal import LearnerSignal


def test_a_written_signal_reads_back_as_redis_returns_it() -> None:
    written = LearnerSignal(
        7, 256, 100, 31.5, 6.25, 10, 300, 1_700_000_000_000, 1_690_000_000_000, 3, ""
    )
    as_stored = {key.encode(): str(value).encode() for key, value in written.fields().items()}
    assert LearnerSignal.from_fields(as_stored) == written


def test_a_signal_without_event_time_leaves_it_out_and_reads_back_without_it() -> None:
    written = LearnerSignal(7, 10, 1, 0.5, 6.0, 0, 9, 1_700_000_000_000, skipped="non_finite_loss")
    assert "event_ts_ms" not in written.fields()
    read = LearnerSignal.from_fields({k: str(v) for k, v in written.fields().items()})
    assert read.event_ts_ms is None and read.skipped == "non_finite_loss"


def test_learner_signal_parses_redis_fields() -> None:
    signal = LearnerSignal.from_fields(
        {
            b"model_version": b"7",
            b"examples": b"256",
            b"hits_at_20": b"100",
            b"mrr_sum": b"31.5",
            b"mean_loss": b"6.25",
            b"first_offset": b"10",
            b"last_offset": b"300",
            b"ts_ms": b"1700000000000",
        }
    )
    assert (signal.model_version, signal.examples, signal.hits_at_20) == (7, 256, 100)
    assert signal.mean_loss == 6.25 and signal.last_offset == 300


def test_learner_signal_without_loss_reads_as_nan() -> None:
    signal = LearnerSignal.from_fields({"examples": "3", "hits_at_20": "1"})
    assert math.isnan(signal.mean_loss)


def test_learner_signal_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="not a learner signal"):
        LearnerSignal.from_fields({"examples": "many"})
