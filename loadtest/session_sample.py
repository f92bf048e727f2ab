"""A seeded share of a recorded source's sessions, as event JSON lines: a sparse shop.

``streamrec sample SOURCE --share 0.1 --seed 0 --out sparse.jsonl`` keeps every event of
about ``share`` of the sessions (all of a session or nothing), chosen by a hash of the seed
and the session id, so the same command gives the same file on any machine and the kept
sessions are whole. The output is any command's recorded source (replay, train, evaluate,
bench drift --replay): a smaller, sparser catalogue with the same shape of sessions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from streamrec.events import Event, encode_event

_SCALE = float(2**64)


def keeps(session_id: str, share: float, seed: int) -> bool:
    """Whether the sample of ``share`` under ``seed`` holds ``session_id``."""
    digest = hashlib.blake2b(f"{seed}|{session_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE < share


def sample_sessions(events: Iterable[Event], share: float, seed: int) -> Iterator[Event]:
    """The events of the sampled sessions, in their order."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], not {share}")
    decided: dict[str, bool] = {}
    for event in events:
        kept = decided.get(event.session_id)
        if kept is None:
            kept = decided[event.session_id] = keeps(event.session_id, share, seed)
        if kept:
            yield event


def write_sample(events: Iterable[Event], share: float, seed: int, out: Path) -> dict[str, int]:
    """Write the sample to ``out`` (event JSON lines); how many events and sessions it holds."""
    sessions: set[str] = set()
    written = 0
    with out.open("wb") as file:
        for event in sample_sessions(events, share, seed):
            file.write(encode_event(event) + b"\n")
            sessions.add(event.session_id)
            written += 1
    return {"events": written, "sessions": len(sessions)}
