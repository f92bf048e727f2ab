"""A seeded share of sessions: whole sessions, about the share, the same on every run."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.session_sample import sample_sessions, write_sample
from streamrec.events import Event
from streamrec.recorded_events import only_events, read_recorded


def events(sessions: int, per_session: int) -> list[Event]:
    return [
        Event(f"e{s}-{i}", "click", f"s{s}", 1_400_000_000_000 + i, item_id=f"i{i}")
        for i in range(per_session)
        for s in range(sessions)
    ]


def test_whole_sessions_about_the_share_and_seeded() -> None:
    stream = events(4000, 3)
    kept = list(sample_sessions(stream, 0.1, seed=7))
    sessions = {e.session_id for e in kept}
    assert 320 < len(sessions) < 480  # 10% of 4000, within about 4 standard deviations
    assert len(kept) == 3 * len(sessions)  # every event of a kept session, none of the others
    assert kept == list(sample_sessions(stream, 0.1, seed=7))
    other = {e.session_id for e in sample_sessions(stream, 0.1, seed=8)}
    assert other != sessions
    assert list(sample_sessions(stream, 1.0, seed=7)) == stream
    with pytest.raises(ValueError, match="share"):
        list(sample_sessions(stream, 0.0, seed=7))


def test_the_sample_is_a_recorded_source(tmp_path: Path) -> None:
    stream = events(500, 2)
    counts = write_sample(stream, 0.2, seed=1, out=tmp_path / "sparse.jsonl")
    read = list(only_events(read_recorded(tmp_path / "sparse.jsonl")))
    assert read == list(sample_sessions(stream, 0.2, seed=1))
    assert counts == {"events": len(read), "sessions": len({e.session_id for e in read})}
