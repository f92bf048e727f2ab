"""The weight registry: versioned model weights shared by learner, fine-tune and serving.

Blobs (safetensors, see ``weight_blobs``) live in ``ModelSettings.store_dir``, a local
directory by default that several processes or machines can share. Metadata lives in
Redis (``RedisKeys.model_version(n)`` hashes, the ``model_versions`` zset, the
``model_current`` pointer) and every new current version is announced on the
``model_updates`` channel (the payload is the version number).

Guarantees:
- **Atomic publishing.** The blob is written to a temporary file, fsynced and renamed;
  then metadata is written; the current pointer is flipped last. A reader following the
  pointer never sees a half-written version.
- **Integrity.** Each blob's sha256 is kept in its metadata and checked on every read.
- **Fallback.** ``load`` applies deltas on top of their snapshot in order; a delta that is
  missing or fails its checksum ends the chain there (at worst: the snapshot alone); a
  broken snapshot falls back to the newest older snapshot that loads. Only when nothing
  loads does it raise ``WeightLoadError``.
- **No lost race.** A delta only becomes current if its parent still is (compare-and-set),
  so a learner cannot overwrite a version promoted meanwhile by a fine-tune or rollback.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import redis

from online_models.model.weights import (
    DeltaMismatchError,
    ModelWeights,
    WeightDelta,
    apply_delta,
)
from online_models.registry.blobs import (
    BlobFormatError,
    decode_delta,
    decode_snapshot,
    encode_delta,
    encode_snapshot,
    sha256_hex,
)
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings
from streamrec.structured_log import log_event

logger = logging.getLogger(__name__)


class WeightLoadError(RuntimeError):
    """No valid weights could be loaded (no version, or every candidate is broken)."""


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """A version's metadata as stored in Redis."""

    version: int
    kind: str  # "snapshot" | "delta"
    parent: int | None
    file: str
    sha256: str
    size_bytes: int
    created_ms: int
    n_items: int
    examples_seen: int = 0
    source: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)

    def to_redis(self) -> dict[str, str]:
        return {
            "version": str(self.version),
            "kind": self.kind,
            "parent": "" if self.parent is None else str(self.parent),
            "file": self.file,
            "sha256": self.sha256,
            "size_bytes": str(self.size_bytes),
            "created_ms": str(self.created_ms),
            "n_items": str(self.n_items),
            "examples_seen": str(self.examples_seen),
            "source": self.source,
            "metrics": json.dumps(self.metrics),
            "offsets": json.dumps(self.offsets),
        }

    @classmethod
    def from_redis(cls, raw: dict[bytes, bytes]) -> VersionInfo:
        data = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            version=int(data["version"]),
            kind=data["kind"],
            parent=int(data["parent"]) if data.get("parent") else None,
            file=data["file"],
            sha256=data["sha256"],
            size_bytes=int(data["size_bytes"]),
            created_ms=int(data["created_ms"]),
            n_items=int(data["n_items"]),
            examples_seen=int(data.get("examples_seen") or 0),
            source=data.get("source", ""),
            metrics=json.loads(data.get("metrics") or "{}"),
            offsets=json.loads(data.get("offsets") or "{}"),
        )


@dataclass(frozen=True, slots=True)
class Publication:
    """The outcome of a publish: the version, and whether it became current."""

    version: int
    current: bool
    size_bytes: int


class WeightRegistry:
    """Publish and load model versions (see the module docstring for the guarantees)."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.keys = RedisKeys(settings.redis.key_prefix)
        self.store_dir = Path(settings.model.store_dir)
        self.client = client

    # -- writing -------------------------------------------------------------------

    def publish_snapshot(
        self,
        weights: ModelWeights,
        *,
        source: str,
        examples_seen: int = 0,
        metrics: dict[str, float] | None = None,
        offsets: dict[str, int] | None = None,
        make_current: bool = True,
    ) -> Publication:
        """Store a complete version (a new number; ``weights.version`` becomes its parent)."""
        if not weights.all_finite():
            raise ValueError("refusing to publish non-finite weights")
        version = self._allocate_version()
        stored = replace(weights, version=version, parent=weights.version or None)
        blob = encode_snapshot(stored)
        info = self._store(
            blob, version, "snapshot", stored.parent, weights.n_items, source, examples_seen,
            metrics, offsets,
        )  # fmt: skip
        current = self._flip(info, expected_parent=None) if make_current else False
        return Publication(version, current, info.size_bytes)

    def publish_delta(
        self,
        delta: WeightDelta,
        *,
        source: str,
        examples_seen: int = 0,
        metrics: dict[str, float] | None = None,
        offsets: dict[str, int] | None = None,
    ) -> Publication:
        """Store a delta on ``delta.parent`` (``delta.version`` is assigned here).

        It becomes current only if ``delta.parent`` still is; otherwise it is stored but
        ``Publication.current`` is False and the caller should reload the current version.
        """
        version = self._allocate_version()
        delta = replace(delta, version=version)
        for values in (*delta.row_values.values(), *delta.dense.values()):
            if not bool(np.isfinite(values).all()):
                raise ValueError("refusing to publish non-finite weights")
        blob = encode_delta(delta)
        n_items = delta.start_row + len(delta.new_item_ids)
        info = self._store(
            blob, version, "delta", delta.parent, n_items, source, examples_seen, metrics,
            offsets,
        )  # fmt: skip
        current = self._flip(info, expected_parent=delta.parent)
        return Publication(version, current, info.size_bytes)

    def set_current(self, version: int) -> None:
        """Make an existing version current (rollback, promotion) and announce it."""
        if not self.client.exists(self.keys.model_version(version)):
            raise KeyError(f"no model version {version}")
        pipe = self.client.pipeline()
        pipe.set(self.keys.model_current, version)
        pipe.publish(self.keys.model_updates, str(version))
        pipe.execute()
        log_event(logger, "model_version_current", version=version)

    def prune(self, keep_snapshots: int) -> list[int]:
        """Delete versions older than the ``keep_snapshots``-th newest snapshot.

        The current version's chain is always kept (it may be old after a rollback).
        Metadata goes first, then the blob, so a reader never finds metadata without a
        blob it could have loaded a moment ago. Returns the deleted version numbers.
        """
        numbers = [int(n) for n in self.client.zrevrange(self.keys.model_versions, 0, -1)]
        snapshots: list[int] = []
        for number in numbers:
            info = self.info(number)
            if info is not None and info.kind == "snapshot":
                snapshots.append(number)
                if len(snapshots) == keep_snapshots:
                    break
        if len(snapshots) < keep_snapshots:
            return []
        oldest_kept = snapshots[-1]
        current = self.current_version()
        protected = set()
        if current is not None:
            protected = {i.version for i in self._chain(current)}
        doomed = [n for n in numbers if n < oldest_kept and n not in protected]
        for number in doomed:
            info = self.info(number)
            pipe = self.client.pipeline()
            pipe.zrem(self.keys.model_versions, str(number))
            pipe.delete(self.keys.model_version(number))
            pipe.execute()
            if info is not None:
                (self.store_dir / info.file).unlink(missing_ok=True)
        return doomed

    def _allocate_version(self) -> int:
        return int(self.client.incr(self.keys.model_sequence))

    def _store(
        self,
        blob: bytes,
        version: int,
        kind: str,
        parent: int | None,
        n_items: int,
        source: str,
        examples_seen: int,
        metrics: dict[str, float] | None,
        offsets: dict[str, int] | None,
    ) -> VersionInfo:
        name = f"v{version:010d}.{kind}.safetensors"
        write_atomically(self.store_dir / name, blob)
        info = VersionInfo(
            version=version,
            kind=kind,
            parent=parent,
            file=name,
            sha256=sha256_hex(blob),
            size_bytes=len(blob),
            created_ms=int(time.time() * 1000),
            n_items=n_items,
            examples_seen=examples_seen,
            source=source,
            metrics=dict(metrics or {}),
            offsets=dict(offsets or {}),
        )
        pipe = self.client.pipeline()
        pipe.hset(self.keys.model_version(version), mapping=info.to_redis())
        pipe.zadd(self.keys.model_versions, {str(version): version})
        pipe.execute()
        return info

    def _flip(self, info: VersionInfo, expected_parent: int | None) -> bool:
        """Point ``current`` at ``info`` (if it still is ``expected_parent``) and announce."""
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.keys.model_current)
                    current = pipe.get(self.keys.model_current)
                    if expected_parent is not None and (
                        current is None or int(current) != expected_parent
                    ):
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.set(self.keys.model_current, info.version)
                    pipe.publish(self.keys.model_updates, str(info.version))
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    # -- reading -------------------------------------------------------------------

    def current_version(self) -> int | None:
        raw = self.client.get(self.keys.model_current)
        return None if raw is None else int(raw)

    def info(self, version: int) -> VersionInfo | None:
        raw = self.client.hgetall(self.keys.model_version(version))
        return VersionInfo.from_redis(raw) if raw else None

    def versions(self, limit: int = 1000) -> list[VersionInfo]:
        """Metadata of the newest ``limit`` versions, oldest first."""
        numbers = self.client.zrevrange(self.keys.model_versions, 0, limit - 1)
        pipe = self.client.pipeline()
        for number in reversed(numbers):
            pipe.hgetall(self.keys.model_version(int(number)))
        return [VersionInfo.from_redis(raw) for raw in pipe.execute() if raw]

    def load(self, version: int | None = None, base: ModelWeights | None = None) -> ModelWeights:
        """The weights of ``version`` (default: current), or the best valid fallback.

        ``base``, when it is a version on the chain, saves re-reading the snapshot: only
        the deltas after it are applied. The returned ``version`` says what was loaded.
        """
        target = self.current_version() if version is None else version
        if target is None:
            raise WeightLoadError("no model version has been published")
        chain = self._chain(target)
        snapshot_info, deltas = chain[0], chain[1:]
        weights: ModelWeights | None = None
        if base is not None and base.version in [i.version for i in chain]:
            weights = base
            deltas = [i for i in deltas if i.version > base.version]
        if weights is None:
            weights = self._load_snapshot_or_older(snapshot_info)
            if weights.version != snapshot_info.version:
                return weights
        for info in deltas:
            try:
                weights = apply_delta(weights, decode_delta(self._read(info)))
            except (OSError, BlobFormatError, DeltaMismatchError) as exc:
                log_event(
                    logger, "model_delta_rejected", logging.WARNING,
                    version=info.version, loaded=weights.version, reason=str(exc),
                )  # fmt: skip
                break
        return weights

    def load_info_chain(self, version: int) -> list[VersionInfo]:
        """The snapshot ``version`` builds on, then its deltas in order (public for tools)."""
        return self._chain(version)

    def _chain(self, version: int) -> list[VersionInfo]:
        chain: list[VersionInfo] = []
        cursor: int | None = version
        while cursor is not None:
            info = self.info(cursor)
            if info is None:
                if not chain:
                    raise WeightLoadError(f"model version {cursor} has no metadata")
                # A delta whose ancestry is gone: only the older snapshots can help.
                return [self._older_snapshot_info(cursor)]
            chain.append(info)
            if info.kind == "snapshot":
                break
            cursor = info.parent
        else:
            raise WeightLoadError(f"version {version} has no snapshot ancestor")
        chain.reverse()
        return chain

    def _older_snapshot_info(self, below: int) -> VersionInfo:
        for number in self.client.zrevrangebyscore(self.keys.model_versions, below, "-inf"):
            info = self.info(int(number))
            if info is not None and info.kind == "snapshot":
                return info
        raise WeightLoadError(f"no snapshot at or below version {below}")

    def _load_snapshot_or_older(self, info: VersionInfo) -> ModelWeights:
        candidate: VersionInfo | None = info
        while candidate is not None:
            try:
                weights = decode_snapshot(self._read(candidate))
                weights.version = candidate.version
                return weights
            except (OSError, BlobFormatError) as exc:
                log_event(
                    logger, "model_snapshot_rejected", logging.WARNING,
                    version=candidate.version, reason=str(exc),
                )  # fmt: skip
                try:
                    candidate = self._older_snapshot_info(candidate.version - 1)
                except WeightLoadError:
                    candidate = None
        raise WeightLoadError(f"no loadable snapshot at or below version {info.version}")

    def _read(self, info: VersionInfo) -> bytes:
        blob = (self.store_dir / info.file).read_bytes()
        digest = sha256_hex(blob)
        if digest != info.sha256:
            raise BlobFormatError(f"sha256 mismatch for {info.file}")
        return blob


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either nothing or all of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
