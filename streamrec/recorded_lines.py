"""What every reader of recorded traffic shares: the rejected-line record, opening plain or
gzip text, and deterministic event ids."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from streamrec.events import Event, Rejection


@dataclass(frozen=True, slots=True)
class LineRejection:
    """A recorded line that is not a valid event, with where it came from."""

    source: str
    line_no: int
    rejection: Rejection


Record = Event | LineRejection


def open_text(path: Path) -> IO[str]:
    """Open a plain or gzip-compressed text file."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - caller closes


def stable_event_id(kind: str, line_no: int, line: str, salt: str = "") -> str:
    """A deterministic id for a recorded line (its source kind, position and content)."""
    digest = hashlib.blake2b(f"{salt}|{kind}|{line_no}|{line}".encode(), digest_size=10)
    return digest.hexdigest()
