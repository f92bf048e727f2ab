"""Hot-swapping the serving model: immutable snapshots, one writer, one reference assignment.

A ``ModelSnapshot`` bundles everything a request needs from one model version (the scorer,
its item rows, the category index built for those rows). It is never changed after it is
built. ``ModelHolder.current`` is swapped with a single reference assignment, which is
atomic under the GIL, and a request reads ``current`` exactly once, so every request is
answered entirely by one version: none sees a half-updated model, none waits for a load.

``ModelFollower`` is the only writer. A thread listens to the registry's pub/sub channel
and another polls ``current_version()`` every ``poll_interval_s`` (the fallback when a
message is lost or pub/sub is down). New versions are loaded and checked in the
background; a version whose load fails is recorded, reported and skipped, and the
previous snapshot keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import redis

from serving.item_categories import CategoryIndex
from serving.metrics import ServingMetrics
from streamrec.structured_log import log_event

logger = logging.getLogger(__name__)
FAILED_VERSIONS_KEPT = 20


class Scorer(Protocol):
    """What serving needs from a model version (``online_models``' ``SessionScorer``)."""

    @property
    def version(self) -> int: ...

    @property
    def item_ids(self) -> Sequence[str]: ...

    def score(self, history: Sequence[str]) -> np.ndarray:
        """Scores (float32) of every item, in ``item_ids`` order, for a click history."""
        ...

    def score_batch(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Scores for several histories at once (len(histories) x n_items)."""
        ...


class LoadedWeights(Protocol):
    """What serving needs from a loaded version (``online_models``' ``ModelWeights``)."""

    @property
    def version(self) -> int: ...

    def all_finite(self) -> bool: ...


class VersionSource(Protocol):
    """What serving needs from the weight registry (``online_models``' ``WeightRegistry``).

    ``load`` applies the version's deltas on ``base`` when ``base`` is on its chain, and
    may fall back to an older version when a blob is broken: the returned ``version``
    says what was actually loaded.
    """

    def current_version(self) -> int | None: ...

    def load(self, version: int | None = None, base: Any = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    """One model version as served; never mutated after construction."""

    scorer: Scorer
    version: int
    loaded_at: float
    source: str
    item_rows: Mapping[str, int]
    categories: CategoryIndex = field(default_factory=CategoryIndex)

    @classmethod
    def build(
        cls, scorer: Scorer, source: str, categories: Mapping[str, str] | None = None
    ) -> ModelSnapshot:
        """Index the scorer's items (and their categories) once, off the request path."""
        item_ids = scorer.item_ids
        return cls(
            scorer=scorer,
            version=int(scorer.version),
            loaded_at=time.time(),
            source=source,
            item_rows={item_id: row for row, item_id in enumerate(item_ids)},
            categories=CategoryIndex.build(item_ids, categories or {}),
        )


class ModelHolder:
    """The reference requests read; replaced whole, never modified."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: ModelSnapshot | None = None

    def swap(self, snapshot: ModelSnapshot) -> None:
        """Publish ``snapshot`` to every later request (a single atomic assignment)."""
        self.current = snapshot


@dataclass(slots=True)
class FollowerState:
    """What the follower has seen, for ``/model`` and tests."""

    failed_versions: deque[tuple[int, str]] = field(
        default_factory=lambda: deque(maxlen=FAILED_VERSIONS_KEPT)
    )
    announced: int = 0
    last_poll_at: float = 0.0
    pubsub_connected: bool = False


class ModelFollower:
    """Follows the registry and swaps new versions into ``holder`` (see module docstring).

    ``build_scorer`` turns what ``registry.load`` returns into a ``Scorer``;
    ``read_categories`` returns the current item -> category map. Exceptions of the types
    in ``corrupt_errors`` mark a version as bad (skipped for good); any other exception is
    an infrastructure fault, logged and retried at the next poll.
    """

    def __init__(
        self,
        holder: ModelHolder,
        registry: VersionSource,
        build_scorer: Callable[[Any], Scorer],
        *,
        redis_client: redis.Redis | None,
        channel: str,
        poll_interval_s: float,
        category_refresh_s: float,
        read_categories: Callable[[], Mapping[str, str]],
        metrics: ServingMetrics,
        corrupt_errors: tuple[type[BaseException], ...] = (ValueError,),
    ) -> None:
        self.holder = holder
        self.registry = registry
        self.build_scorer = build_scorer
        self.redis_client = redis_client
        self.channel = channel
        self.poll_interval_s = poll_interval_s
        self.category_refresh_s = category_refresh_s
        self.read_categories = read_categories
        self.metrics = metrics
        self.corrupt_errors = corrupt_errors
        self.state = FollowerState()
        self._failed: set[int] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._categories: Mapping[str, str] = {}
        self._categories_read_at = -float("inf")
        self._weights: Any = None

    def start(self) -> None:
        """Start the loader and the pub/sub listener (daemon threads)."""
        self._threads = [threading.Thread(target=self._load_loop, name="model-loader", daemon=True)]
        if self.redis_client is not None:
            self._threads.append(
                threading.Thread(target=self._listen_loop, name="model-updates", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop both threads (a load in progress finishes first)."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def failed_versions(self) -> list[int]:
        return [version for version, _ in self.state.failed_versions]

    def check_now(self, source: str = "poll") -> None:
        """One follow step: refresh categories if due, load the newest good version if new."""
        now = time.monotonic()
        if now - self._categories_read_at >= self.category_refresh_s:
            self._refresh_categories(now)
        self.state.last_poll_at = time.time()
        target = max(self.state.announced, self.registry.current_version() or 0)
        current = self.holder.current
        if target <= (current.version if current else 0) or target in self._failed:
            return
        self._load(target, source)

    def _load(self, version: int, source: str) -> None:
        started = time.perf_counter()
        try:
            weights = self.registry.load(version, base=self._weights)
            if not weights.all_finite():
                raise ValueError(f"version {weights.version} has non-finite weights")
            scorer = self.build_scorer(weights)
            snapshot = ModelSnapshot.build(scorer, source, self._categories)
        except self.corrupt_errors as exc:
            self._skip(version, f"{type(exc).__name__}: {exc}")
            return
        if weights.version != version:
            # The registry fell back to an older version: the requested one is broken.
            self._skip(version, f"registry fell back to version {weights.version}")
        current = self.holder.current
        if current is not None and snapshot.version <= current.version:
            return
        self._weights = weights
        self.holder.swap(snapshot)
        elapsed = time.perf_counter() - started
        self.metrics.model_swaps.inc()
        self.metrics.model_version.set(snapshot.version)
        self.metrics.model_loaded_at.set(snapshot.loaded_at)
        self.metrics.model_load_seconds.observe(elapsed)
        log_event(
            logger,
            "model_swapped",
            version=snapshot.version,
            source=source,
            items=len(snapshot.item_rows),
            load_ms=round(elapsed * 1000, 1),
        )

    def _skip(self, version: int, reason: str) -> None:
        """Remember a bad version so it is never retried, and report it."""
        self._failed.add(version)
        self.state.failed_versions.append((version, reason[:300]))
        self.metrics.model_load_failures.inc()
        log_event(logger, "model_version_skipped", logging.ERROR, version=version, error=reason)

    def _refresh_categories(self, now: float) -> None:
        self._categories_read_at = now
        categories = self.read_categories()
        if categories == self._categories:
            return
        self._categories = categories
        current = self.holder.current
        if current is not None:
            index = CategoryIndex.build(current.scorer.item_ids, categories)
            self.holder.swap(replace(current, categories=index))

    def _load_loop(self) -> None:
        source = "startup"
        while not self._stop.is_set():
            try:
                self.check_now(source)
            except Exception as exc:  # infrastructure fault: retried at the next poll
                log_event(logger, "model_follow_failed", logging.WARNING, error=repr(exc)[:300])
            woken = self._wake.wait(self.poll_interval_s)
            self._wake.clear()
            source = "pubsub" if woken else "poll"

    def _listen_loop(self) -> None:
        assert self.redis_client is not None
        backoff_s = 0.1
        while not self._stop.is_set():
            pubsub = self.redis_client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self.state.pubsub_connected = True
                backoff_s = 0.1
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._announce(message.get("data"))
            except redis.RedisError as exc:
                self.state.pubsub_connected = False
                log_event(logger, "model_updates_disconnected", logging.WARNING, error=repr(exc))
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
            finally:
                pubsub.close()
        self.state.pubsub_connected = False

    def _announce(self, data: object) -> None:
        try:
            version = int(data)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            log_event(logger, "model_update_ignored", logging.WARNING, data=repr(data)[:80])
            return
        if version > self.state.announced:
            self.state.announced = version
            self._wake.set()
