"""Re-sync Redis from the flow's state after Redis lost its data.

The flow writes a session only when it changes, so after Redis restarts empty (no
persistence), is flushed, or fails over to an empty replica, every session that stays quiet
stays missing (in one incident 28.7% never came back). The flow's state holds every live
session, the popularity scores and the item categories, so it can write them all again;
this module decides when.

The marker is one key, ``{prefix}:flow:marker``; its value names the Redis "generation" the
flow writes to. Each *owner* of flow state (every feature shard, the popularity step, every
publish partition for the item categories) keeps in its recovery snapshot the marker value
under which it last wrote all of its state, and every ``STREAMREC_FLOW_REDIS_CHECK_S`` reads
the marker (one GET):

- the value it recorded: nothing to do;
- missing: Redis lost the flow's keys. The owner sets a fresh value with ``SET NX``; exactly
  one owner, across all flow processes, wins, and it reports the loss (``detected``: the
  ``redis_resync`` alert);
- another value: the owner writes its whole state again, then records that value.

Why a marker: it disappears with the data it stands for (same server and database, no TTL),
whether Redis restarted on the same address, was flushed, or is another server now; a run id
alone would also change on a restart that kept the data. Checking costs one GET per owner and
interval, off the per-event path. A crash in the middle is safe: an owner records the new
value in the same epoch as its re-sync writes, so a restart from an earlier snapshot re-syncs
again. A first start re-syncs an empty or restored state without an alert. Not detected: a
Redis restored from an older RDB/AOF file that still holds the marker; ``DEL`` the marker to
force a re-sync (docs/runbook.md, "Redis re-sync").

On a Redis Cluster one primary restarting empty (or failing over to an empty replica) loses
only the keys of its slots, so one marker cannot stand for them all: there is one marker key
per primary, ``{prefix}:flow:marker:{n}``, named so that it hashes into that primary's slots
(``streamrec.redis_connection.primary_keys``: the smallest ``n`` that lands there, from the
client's slot map). A check reads them all (one GET per primary), and each missing one is
set with ``SET NX`` (exactly one owner creates it and reports the loss). The flow's
"generation" is then the values of all of them joined, in that order: any primary losing
its keys changes it, and every owner writes its whole state again, the sessions of the
primaries that kept theirs included (absolute values: harmless, and simpler than knowing
which session lives where). A new slot map (a primary added, slots moved) can name new
marker keys: one re-sync, with the alert, follows.

While Redis does not answer, a check is skipped (logged) and tried again an interval later;
the flow's own writes fail, and restart it, if Redis stays away.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from streamrec.redis_connection import REDIS_ERRORS, RedisClient, primary_keys
from streamrec.structured_log import log_event

logger = logging.getLogger("streamrec.flow")

RESYNC_CHUNK = 5000  # sessions per re-sync output: one pipelined round trip each


@dataclass(frozen=True, slots=True)
class Resync:
    """An owner must write its whole state again, then record ``marker``.

    ``detected``: this owner found the marker missing, i.e. it reports the loss.
    """

    marker: str
    detected: bool


@dataclass(frozen=True, slots=True)
class ResyncNote:
    """What one owner re-synced, for the publisher (metrics, log, the alert when detected).

    ``state`` is ``sessions``, ``popularity`` or ``categories``; ``entries`` how many it wrote.
    """

    state: str
    entries: int
    marker: str
    detected: bool


class MarkerSource(Protocol):
    def read(self) -> tuple[str, bool] | None:
        """(the marker's value, whether this call created it); None when Redis is away."""
        ...


class RedisMarker:
    """The marker key of one Redis key prefix (one per primary on a cluster); shared by the
    owners of a process.

    While Redis does not answer, that is logged once per ``WARN_EVERY_S``, not by every
    owner at every check.
    """

    WARN_EVERY_S = 10.0

    def __init__(self, client: RedisClient, key: str) -> None:
        self._client = client
        self._key = key
        self._warned_s = -math.inf

    def read(self) -> tuple[str, bool] | None:
        try:
            values, created = [], False
            for key in primary_keys(self._client, self._key):
                reading = self._read_one(key)
                if reading is None:
                    return None
                values.append(reading[0])
                created |= reading[1]
            return "|".join(values), created
        except REDIS_ERRORS as exc:
            now = time.monotonic()
            if now - self._warned_s >= self.WARN_EVERY_S:
                self._warned_s = now
                log_event(logger, "redis_marker_unreadable", logging.WARNING, error=repr(exc))
            return None

    def _read_one(self, key: str) -> tuple[str, bool] | None:
        value = self._client.get(key)
        if value is not None:
            return value.decode(), False
        fresh = new_marker()
        if self._client.set(key, fresh, nx=True):
            return fresh, True
        value = self._client.get(key)  # another owner set it first
        return (value.decode(), False) if value is not None else None


def new_marker() -> str:
    """A fresh marker value: when it was made (readable), and random (unique)."""
    return f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}-{uuid.uuid4().hex[:12]}"


class ResyncCheck:
    """One owner's schedule: every ``interval_s``, whether it must re-sync.

    The owner keeps the marker value it last synced under (in its snapshot) and passes it in;
    the first call checks at once. ``next_check_at`` is the next check's time, for Bytewax's
    ``notify_at`` (so idle owners check too); ``clock`` is the wall clock, which that uses.
    """

    def __init__(
        self,
        marker: MarkerSource,
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._marker = marker
        self._interval_s = interval_s
        self._clock = clock
        self._next_s = clock()
        self.next_check_at = datetime.fromtimestamp(self._next_s, UTC)

    def due(self, synced: str | None) -> Resync | None:
        """The re-sync to do now, or None (not time yet, Redis holds the state, or unknown)."""
        now = self._clock()
        if now < self._next_s:
            return None
        self._next_s = now + self._interval_s
        self.next_check_at = datetime.fromtimestamp(self._next_s, UTC)
        reading = self._marker.read()
        if reading is None:
            return None
        value, created = reading
        if value == synced:
            return None
        return Resync(value, detected=created and synced is not None)
