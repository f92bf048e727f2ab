"""The weight registry: versioned model weights shared by learner, fine-tune and serving.

Blobs (safetensors, see ``blobs``) live in ``ModelSettings.store_dir`` (``blob_store``),
a local directory by default that several processes or machines can share. Metadata
lives in Redis (``version_index``: ``RedisKeys.model_version(n)`` hashes, the
``model_versions`` zset, the ``model_current`` pointer) and every new current version is
announced on the ``model_updates`` channel (the payload is the version number). A second
pointer, ``model_canary``, names the version the ``canary`` experiment arm serves while a
fine-tune is rolled out (``online_models/drift/canary_loop.py`` decides its fate); its
changes are announced on ``model_canary_updates`` (the version, or ``""`` when cleared).

Guarantees:
- **Atomic publishing.** The blob is written to a temporary file, fsynced and renamed;
  then metadata is written; the current pointer is flipped last. A reader following the
  pointer never sees a half-written version.
- **Integrity.** Each blob's sha256 is kept in its metadata and its name and checked on
  every read; its header is checked against the model it declares (``weight_spec``)
  before a tensor is read, so a blob that does not fit is refused without allocating.
- **Fallback.** ``load`` applies deltas on top of their snapshot in order; a delta that is
  missing, corrupt or does not fit ends the chain there (at worst: the snapshot alone); a
  broken snapshot falls back to its parent (the same lineage one step back), else to the
  newest older snapshot that loads. Only when nothing loads does it raise
  ``WeightLoadError``. The returned ``version`` says what was loaded.
- **No lost race, no orphan.** A publication given ``expected_current`` (every delta: its
  parent) only becomes current if the pointer still is that version (compare-and-set), so
  a learner cannot overwrite a version promoted meanwhile by a fine-tune or rollback. One
  that loses keeps nothing: it writes nothing when the pointer already moved, and removes
  its metadata and blob when it lost the race.
- **No reused number or file.** Version numbers come from a Redis counter that, when Redis
  lost it (restarted empty), restarts above every version in the store; blob names carry
  their sha256, so no write can replace another version's file either way.
- **Recovery.** ``recover_lineage`` puts back what Redis lost: the store's blobs carry
  their metadata in their headers, and the newest one that loads becomes current again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from online_models.model.weights import (
    ModelShape,
    ModelWeights,
    RowChanges,
    WeightDelta,
    apply_deltas,
    check_continues,
)
from online_models.registry.blob_store import BlobStore
from online_models.registry.blobs import (
    BlobFormatError,
    decode_delta,
    decode_snapshot,
    encode_delta,
    encode_snapshot,
    sha256_hex,
)
from online_models.registry.version_index import VersionIndex
from online_models.registry.version_info import BlobName, Publication, VersionInfo
from online_models.registry.weight_spec import WeightSpec
from streamrec.redis_connection import RedisClient
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings, fitted_values
from streamrec.structured_log import log_event

logger = logging.getLogger(__name__)

# What reading a blob or applying a delta raises for a blob that is missing or unusable.
_UNUSABLE = (OSError, ValueError, IndexError)


class WeightLoadError(RuntimeError):
    """No valid weights could be loaded (no version, or every candidate is broken)."""


class WeightRegistry:
    """Publish and load model versions (see the module docstring for the guarantees)."""

    def __init__(self, settings: Settings, client: RedisClient) -> None:
        self.keys = RedisKeys(settings.redis.key_prefix)
        self.index = VersionIndex(self.keys, client)
        self.store = BlobStore(settings.model.store_dir)

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
        expected_current: int | None = None,
    ) -> Publication:
        """Store a complete version (a new number; ``weights.version`` becomes its parent).

        With ``expected_current`` it becomes current only if that version still is.
        """
        if not weights.all_finite():
            raise ValueError("refusing to publish non-finite weights")
        parent = weights.version or None

        def encode(version: int, info: str) -> bytes:
            return encode_snapshot(replace(weights, version=version, parent=parent), info)

        return self._publish(
            "snapshot", parent, weights.n_items, encode, source, examples_seen, metrics,
            offsets, make_current, expected_current,
        )  # fmt: skip

    def publish_delta(
        self,
        delta: WeightDelta,
        *,
        source: str,
        examples_seen: int = 0,
        metrics: dict[str, float] | None = None,
        offsets: dict[str, int] | None = None,
        expected_current: int | None = None,
    ) -> Publication:
        """Store a delta on ``delta.parent`` (``delta.version`` is assigned here).

        It becomes current only if ``expected_current`` (default: ``delta.parent``) still
        is; otherwise nothing is kept, ``Publication.current`` is False and the caller
        should reload the current version.
        """
        for values in (*delta.row_values.values(), *delta.dense.values()):
            if not bool(np.isfinite(values).all()):
                raise ValueError("refusing to publish non-finite weights")
        expected = delta.parent if expected_current is None else expected_current

        def encode(version: int, info: str) -> bytes:
            return encode_delta(replace(delta, version=version), info)

        n_items = delta.start_row + len(delta.new_item_ids)
        return self._publish(
            "delta", delta.parent, n_items, encode, source, examples_seen, metrics, offsets,
            True, expected,
        )  # fmt: skip

    def _publish(
        self,
        kind: str,
        parent: int | None,
        n_items: int,
        encode: Callable[[int, str], bytes],
        source: str,
        examples_seen: int,
        metrics: dict[str, float] | None,
        offsets: dict[str, int] | None,
        make_current: bool,
        expected_current: int | None,
    ) -> Publication:
        if expected_current is not None and self.current_version() != expected_current:
            return Publication(0, False, 0)  # already lost: write nothing
        version = self.index.allocate(floor=self._highest_version)
        # The learner knobs fitted on the shop (``streamrec train``) follow the lineage:
        # a version without its own inherits its parent's (fine-tunes, rollbacks, canaries).
        parent_info = self.info(parent) if parent is not None else None
        inherited = fitted_values(parent_info.metrics) if parent_info is not None else {}
        info = VersionInfo(
            version, kind, parent, "", "", 0, int(time.time() * 1000), n_items, examples_seen,
            source, inherited | dict(metrics or {}), dict(offsets or {}),
        )  # fmt: skip
        blob = encode(version, info.header_info())
        digest = sha256_hex(blob)
        file = self.store.write(BlobName(version, kind, digest), blob)
        info = replace(info, file=file, sha256=digest, size_bytes=len(blob))
        self.index.register(info)
        if not make_current:
            return Publication(version, False, info.size_bytes)
        if self.index.flip(version, expected_current):
            return Publication(version, True, info.size_bytes)
        self._remove([info])  # lost the race: nothing refers to it
        return Publication(0, False, 0)

    def set_current(self, version: int) -> None:
        """Make an existing version current (rollback, promotion) and announce it."""
        if self.info(version) is None:
            raise KeyError(f"no model version {version}")
        self.index.set_current(version)
        log_event(logger, "model_version_current", version=version)

    def set_canary(self, version: int) -> None:
        """Serve an existing version on the ``canary`` arm and announce it."""
        if self.info(version) is None:
            raise KeyError(f"no model version {version}")
        self.index.set_canary(version)
        log_event(logger, "model_canary_set", version=version)

    def clear_canary(self, only_if: int | None = None) -> bool:
        """No canary any more (the ``canary`` arm serves the control's model); announced.

        With ``only_if`` only while the canary still is that version (a newer canary set
        meanwhile stays). Whether a canary was removed.
        """
        cleared = self.index.clear_canary(only_if)
        if cleared:
            log_event(logger, "model_canary_cleared", only_if=only_if)
        return cleared

    def prune(self, keep_snapshots: int) -> list[int]:
        """Delete versions older than the ``keep_snapshots``-th newest snapshot.

        The current and the canary version's chains are always kept (the current one may
        be old after a rollback; the canary's snapshot is older than the learner's deltas).
        Metadata goes first, then the blob, so a reader never finds metadata without a
        blob it could have loaded a moment ago. Returns the deleted version numbers.
        """
        numbers = self.index.numbers()
        snapshots: list[int] = []
        for number in numbers:
            info = self.info(number)
            if info is not None and info.kind == "snapshot":
                snapshots.append(number)
                if len(snapshots) == keep_snapshots:
                    break
        if len(snapshots) < keep_snapshots:
            return []
        protected: set[int] = set()
        for pointer in (self.current_version(), self.canary_version()):
            if pointer is not None and self.info(pointer) is not None:
                protected |= {i.version for i in self._chain(pointer)}
        doomed = [n for n in numbers if n < snapshots[-1] and n not in protected]
        self._remove([info for n in doomed if (info := self.info(n)) is not None])
        return doomed

    def _remove(self, infos: list[VersionInfo]) -> None:
        for info in infos:
            self.index.unregister(info.version)
            self.store.remove(info.file)

    def _highest_version(self) -> int:
        """The highest version number in Redis or in the store (0: none anywhere)."""
        stored = [blob.name.version for blob in self.store.blobs()]
        return max([*stored, *self.index.numbers(limit=1)], default=0)

    # -- reading -------------------------------------------------------------------

    def current_version(self) -> int | None:
        return self.index.current()

    def canary_version(self) -> int | None:
        """The version the ``canary`` arm serves, None when no canary is rolled out."""
        return self.index.canary()

    def info(self, version: int) -> VersionInfo | None:
        return self.index.info(version)

    def versions(self, limit: int = 1000) -> list[VersionInfo]:
        """Metadata of the newest ``limit`` versions, oldest first."""
        return self.index.infos(limit)

    def load(self, version: int | None = None, base: ModelWeights | None = None) -> ModelWeights:
        """The weights of ``version`` (default: current), or the best valid fallback.

        ``base``, when it is a version on the chain, saves re-reading the snapshot: only
        the deltas after it are applied, and the result's ``changes`` names the rows they
        touched. The returned ``version`` says what was loaded.
        """
        target = self.current_version() if version is None else version
        if target is None:
            raise WeightLoadError("no model version has been published")
        return self._load(target, base, broken=set())

    def load_newest(self, at_most: int | None = None) -> ModelWeights:
        """What ``load`` gives for the newest version at or below ``at_most`` that has
        metadata (for a pointer to a version whose metadata is gone)."""
        newest = self.index.numbers(at_most, limit=1)
        if not newest:
            raise WeightLoadError(f"no model version at or below {at_most}")
        return self.load(newest[0])

    def load_info_chain(self, version: int) -> list[VersionInfo]:
        """The snapshot ``version`` builds on, then its deltas in order (public for tools)."""
        return self._chain(version)

    def _load(self, target: int, base: ModelWeights | None, broken: set[int]) -> ModelWeights:
        """``load`` for ``target``; ``broken``: snapshots already found not to load."""
        chain = self._chain(target, None if base is None else base.version)
        # chain[0] is the snapshot, or ``base``'s own entry (a delta, maybe) when the walk
        # stopped there: then it is never read, the deltas after it apply to ``base``
        snapshot, deltas = chain[0], chain[1:]
        from_base = base is not None and base.version in {info.version for info in chain}
        if from_base:
            weights = base
            deltas = [info for info in deltas if info.version > weights.version]
        elif snapshot.version in broken:  # its stand-in is being (or was) looked for already
            raise WeightLoadError(f"snapshot {snapshot.version} does not load")
        else:
            try:
                weights = self._read_snapshot(snapshot)
            except _UNUSABLE as exc:
                log_event(
                    logger, "model_snapshot_rejected", logging.WARNING,
                    version=snapshot.version, reason=str(exc),
                )  # fmt: skip
                broken.add(snapshot.version)
                return self._load_instead_of(snapshot, broken)
        readable: list[WeightDelta] = []
        version, n_items = weights.version, weights.n_items
        for info in deltas:
            try:
                delta = self._read_delta(info, weights.shape)
                check_continues(weights, version, n_items, delta)
            except _UNUSABLE as exc:
                log_event(
                    logger, "model_delta_rejected", logging.WARNING,
                    version=info.version, loaded=version, reason=str(exc),
                )  # fmt: skip
                break
            readable.append(delta)
            version, n_items = delta.version, n_items + len(delta.new_item_ids)
        loaded = apply_deltas(weights, readable)  # one copy of the table for all of them
        if not from_base:
            return loaded
        # the rows that may differ from ``base``, for a caller updating what it built
        # from it (serving's scorer)
        touched = np.concatenate([np.zeros(0, np.int64), *(delta.rows for delta in readable)])
        return replace(loaded, changes=RowChanges(weights.version, np.unique(touched)))

    def _load_instead_of(self, snapshot: VersionInfo, broken: set[int]) -> ModelWeights:
        """A broken snapshot's stand-in: its parent (the same lineage one step back), else
        the newest older snapshot that loads."""
        candidates = [snapshot.parent] if snapshot.parent is not None else []
        candidates += [info.version for info in self.index.snapshots(snapshot.version - 1)]
        for candidate in candidates:
            if self.info(candidate) is None:
                continue
            try:
                return self._load(candidate, None, broken)
            except WeightLoadError:
                continue
        raise WeightLoadError(f"no loadable version at or below {snapshot.version}")

    def _chain(self, version: int, base: int | None = None) -> list[VersionInfo]:
        """``version``'s ancestry, oldest first: from its snapshot, or from ``base`` when the
        walk meets it first (a follower holding ``base`` needs nothing older, and each step
        back is a read of the version index)."""
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
            if info.kind == "snapshot" or cursor == base:
                break
            cursor = info.parent
        else:
            raise WeightLoadError(f"version {version} has no snapshot ancestor")
        chain.reverse()
        return chain

    def _older_snapshot_info(self, below: int) -> VersionInfo:
        for info in self.index.snapshots(below):
            return info
        raise WeightLoadError(f"no snapshot at or below version {below}")

    def _read_snapshot(self, info: VersionInfo) -> ModelWeights:
        weights = decode_snapshot(self.store.read(info.file, info.sha256))
        if weights.version != info.version:
            raise BlobFormatError(f"{info.file} holds version {weights.version}")
        return weights

    def _read_delta(self, info: VersionInfo, shape: ModelShape) -> WeightDelta:
        """The delta of ``info``, checked against a model of ``shape`` (what it applies to)."""
        delta = decode_delta(self.store.read(info.file, info.sha256), WeightSpec.for_shape(shape))
        if delta.version != info.version:
            raise BlobFormatError(f"{info.file} holds version {delta.version}")
        return delta

    # -- recovery ------------------------------------------------------------------

    def is_empty(self) -> bool:
        """Nothing was ever published here: no metadata in Redis, no blob in the store."""
        return not self.index.count() and not self.store.blobs()

    def recover_lineage(self) -> int | None:
        """Put back what Redis lost (it restarted empty, or keys were deleted).

        Registers every blob of the store whose metadata is gone (read from its header),
        raises the version counter above every stored version, and, when no version is
        current, makes the newest one that loads current (announced like any other).
        Returns that version, or None when the pointer was left alone. Safe to run from
        several processes at once: registering writes the same values, the counter only
        goes up and the pointer is only set where there is none.
        """
        registered = set(self.index.numbers())
        restored: list[int] = []
        for blob in self.store.blobs():
            if blob.name.version in registered:
                continue
            try:
                sha256 = blob.name.sha256 or self.store.sha256(blob.file)
                info = VersionInfo.from_header(
                    self.store.read_header(blob.file), blob.file, sha256, blob.size_bytes
                )
                if (info.version, info.kind) != (blob.name.version, blob.name.kind):
                    raise BlobFormatError(f"{blob.file} holds v{info.version} {info.kind}")
            except (OSError, BlobFormatError) as exc:
                log_event(
                    logger, "model_blob_not_restored", logging.WARNING,
                    file=blob.file, reason=str(exc),
                )  # fmt: skip
                continue
            self.index.register(info)
            registered.add(info.version)
            restored.append(info.version)
        self.index.raise_counter(max(registered, default=0))
        if restored:
            log_event(logger, "model_versions_restored", count=len(restored), newest=restored[-1])
        if self.current_version() is not None or not registered:
            return None
        try:
            version = self.load_newest().version
        except WeightLoadError as exc:
            log_event(logger, "model_lineage_unloadable", logging.ERROR, reason=str(exc))
            return None
        if not self.index.set_current(version, only_if_none=True):
            return None
        log_event(logger, "model_lineage_recovered", logging.WARNING, current=version)
        return version
