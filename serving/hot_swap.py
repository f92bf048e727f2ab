"""Hot-swapping the serving model: immutable snapshots, one writer, one reference assignment.

A ``ModelSnapshot`` bundles everything a request needs from one model version (the scorer,
its item rows, the category index built for those rows). It is never changed after it is
built. ``ModelHolder.current`` is swapped with a single reference assignment, which is
atomic under the GIL, and a request reads ``current`` exactly once, so every request is
answered entirely by one version: none sees a half-updated model, none waits for a load.

``ModelFollower`` is the only writer. It serves the registry's ``current_version()``: a
thread listening to the registry's pub/sub channel only wakes it up, and it also polls
every ``poll_interval_s`` (the fallback when a message is lost or pub/sub is down).
Versions are loaded and checked in the background; a version whose load fails is
recorded, reported and retried with backoff, and the previous snapshot keeps serving.
Loading newer versions is kept to ``swap_cpu_share`` of the worker's time: after a swap
that took t seconds of the loader's CPU, the next newer version waits t x (1 / share - 1).
A 16k-item version loads in tens of milliseconds and is never held back; a 1M-item one,
at a delta a second, would otherwise take most of the worker from its requests.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from serving.item_categories import CategoryIndex
from serving.metrics import ServingMetrics
from streamrec.redis_connection import REDIS_ERRORS, RedisClient
from streamrec.structured_log import log_event

if TYPE_CHECKING:
    from online_models.model.scorer import ScoreParts

logger = logging.getLogger(__name__)
FAILED_VERSIONS_KEPT = 20


class Scorer(Protocol):
    """What serving needs from a model version (``online_models``' ``SessionScorer``)."""

    @property
    def version(self) -> int: ...

    @property
    def item_ids(self) -> Sequence[str]: ...

    @property
    def item_rows(self) -> Mapping[str, int]:
        """Item id -> row (of ``item_ids``)."""
        ...

    def top_k_batch(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        excluded: Sequence[np.ndarray | None] = (),
        candidates: Sequence[np.ndarray | None] = (),
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per click history, the ``k`` best rows (of ``item_ids``) and their float32
        scores, best first, skipping ``excluded[i]`` rows and, when ``candidates[i]`` is
        given, choosing among those rows only; non-finite scores are never returned."""
        ...

    def explain(self, history: Sequence[str], rows: np.ndarray) -> ScoreParts:
        """The parts of the ranking scores of ``rows`` for ``history`` and each click's
        leave-one-out drop (only for a request that asks for an explanation)."""
        ...


class LoadedWeights(Protocol):
    """What serving needs from a loaded version (``online_models``' ``ModelWeights``)."""

    @property
    def version(self) -> int: ...

    @property
    def changes(self) -> Any:
        """The rows changed since an earlier version (``RowChanges``: ``base``, ``rows``),
        when the registry built this one from it; None otherwise."""
        ...

    def all_finite(self, rows: Any = None) -> bool:
        """Whether every tensor is finite (with ``rows``: only those rows of the row
        tensors, the rest checked in an earlier version)."""
        ...


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
        cls,
        scorer: Scorer,
        source: str,
        categories: Mapping[str, str] | None = None,
        previous: ModelSnapshot | None = None,
    ) -> ModelSnapshot:
        """Index the scorer's items' categories once, off the request path (extending
        ``previous``'s index when this version only adds items)."""
        return cls(
            scorer=scorer,
            version=int(scorer.version),
            loaded_at=time.time(),
            source=source,
            item_rows=scorer.item_rows,
            categories=CategoryIndex.build(
                scorer.item_ids,
                {} if categories is None else categories,
                previous.categories if previous is not None else None,
            ),
        )


class ModelHolder:
    """The reference requests read; replaced whole, never modified."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: ModelSnapshot | None = None

    def swap(self, snapshot: ModelSnapshot) -> None:
        """Publish ``snapshot`` to every later request (a single atomic assignment)."""
        self.current = snapshot


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """A version that failed to load: why, how often, and when it is tried again."""

    version: int
    reason: str
    attempts: int
    retry_at: float  # on the follower's clock (monotonic): not loaded again before this
    next_retry_at: float  # the same moment as Unix time, for people reading ``/model``


def retry_delay_s(attempts: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """The wait before trying a version again after ``attempts`` failures in a row.

    Doubles from ``base_s`` up to ``max_s``; half of it is random ("equal jitter"), so the
    workers that failed on the same blob at the same moment do not retry in lockstep. The
    result always lies in ``[ceiling / 2, ceiling]`` with ``ceiling <= max_s``.
    """
    ceiling = min(max_s, base_s * 2 ** min(attempts - 1, 64))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass(slots=True)
class FollowerState:
    """What the follower has seen, for ``/model`` and tests.

    ``failures`` is replaced whole, never modified, so a request thread reading it while
    the loader records a failure sees either the old mapping or the new one.
    """

    failures: Mapping[int, LoadFailure] = field(default_factory=dict)
    last_poll_at: float = 0.0
    pubsub_connected: bool = False


class ModelFollower:
    """Follows the registry and swaps its current version into ``holder``.

    The registry's ``current_version()`` is the truth: the follower serves exactly that
    version, whether it is above or below the one serving (a rollback, or a registry
    reset that restarted the numbering). A pub/sub announcement is only a hint to look now:
    its number is never used, so a bogus or stale message cannot steer serving.

    Any exception while loading a version or building its scorer, non-finite weights, or
    the registry falling back to an older version, is a failed load: counted, logged,
    listed by ``/model``, and tried again after an exponential backoff (``retry_base_s``
    doubling up to ``retry_max_s``, jittered) for as long as it stays current, because
    an on-call engineer who repairs a blob or Redis expects serving to pick it up without
    a restart, and a broken version must not be reloaded in a tight loop. Meanwhile the
    previous snapshot keeps serving. When the registry fell back, its older version is
    swapped in only if nothing newer is serving.
    """

    def __init__(
        self,
        holder: ModelHolder,
        registry: VersionSource,
        build_scorer: Callable[[Any, Scorer | None], Scorer],
        *,
        redis_client: RedisClient | None,
        channel: str,
        poll_interval_s: float,
        category_refresh_s: float,
        read_categories: Callable[[], Mapping[str, str]],
        metrics: ServingMetrics,
        retry_base_s: float,
        retry_max_s: float,
        clock: Callable[[], float] = time.monotonic,
        arm: str | None = None,
        swap_cpu_share: float = 1.0,
        cpu_clock: Callable[[], float] = time.thread_time,
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
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.clock = clock
        self.swap_cpu_share = swap_cpu_share
        self.cpu_clock = cpu_clock  # the loader thread's CPU time: what a load takes from requests
        self._forward_after = -float("inf")  # on ``clock``: no newer version loads before
        # A pinned or canary experiment arm's follower: its own version gauge, named in its
        # logs; its swaps and failures count with the online follower's.
        self.arm = arm
        self.version_gauge = (
            metrics.model_version if arm is None else metrics.arm_model_version.labels(arm)
        )
        self.state = FollowerState()
        self._rng = random.Random()
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
        return list(self.state.failures)

    def check_now(self, source: str = "poll") -> None:
        """One follow step: refresh categories if due; load the registry's current version
        if it is not the one serving and, when it failed before, its retry is due."""
        now = self.clock()
        if now - self._categories_read_at >= self.category_refresh_s:
            self._refresh_categories(now)
        self.state.last_poll_at = time.time()
        target = self.registry.current_version()
        current = self.holder.current
        if target is None or (current is not None and target == current.version):
            return
        if current is not None and target > current.version and now < self._forward_after:
            return  # its turn comes at ``_forward_after`` (a rollback never waits)
        failure = self.state.failures.get(target)
        if failure is not None and now < failure.retry_at:
            return
        self._load(target, source)

    def _load(self, version: int, source: str) -> None:
        started, cpu_started = self.clock(), self.cpu_clock()
        current = self.holder.current
        # Deltas are applied on the serving weights only when moving forward; after a
        # rollback or a registry reset (current went down) the version loads from scratch.
        base = self._weights if current is not None and version > current.version else None
        snapshot: ModelSnapshot | None = None
        try:
            weights = self.registry.load(version, base=base)
            fell_back = weights.version != version
            if not fell_back or current is None or weights.version > current.version:
                # rows the registry did not change are the base's, checked when it loaded
                changes = weights.changes
                follows = base is not None and changes is not None and changes.base == base.version
                if not weights.all_finite(changes.rows if follows else None):
                    raise ValueError(f"version {weights.version} has non-finite weights")
                scorer = self.build_scorer(weights, current.scorer if current else None)
                snapshot = ModelSnapshot.build(scorer, source, self._categories, current)
        except Exception as exc:  # whatever the cause, this version is not served (yet)
            self._fail(version, f"{type(exc).__name__}: {exc}")
            return
        if fell_back:
            self._fail(version, f"registry fell back to version {weights.version}")
        elif version in self.state.failures:
            self.state.failures = {v: f for v, f in self.state.failures.items() if v != version}
        if snapshot is None:
            return
        self._weights = weights
        self.holder.swap(snapshot)
        elapsed, spent = self.clock() - started, self.cpu_clock() - cpu_started
        if current is not None:  # the CPU it took from requests (none at startup)
            self._forward_after = self.clock() + spent * (1 / self.swap_cpu_share - 1)
        self.metrics.model_swaps.inc()
        self.version_gauge.set(snapshot.version)
        if self.arm is None:
            self.metrics.model_loaded_at.set(snapshot.loaded_at)
        self.metrics.model_load_seconds.observe(elapsed)
        log_event(
            logger,
            "model_swapped",
            arm=self.arm,
            version=snapshot.version,
            source=source,
            items=len(snapshot.item_rows),
            load_ms=round(elapsed * 1000, 1),
            load_cpu_ms=round(spent * 1000, 1),
        )

    def _fail(self, version: int, reason: str) -> None:
        """Record a failed load of ``version``, schedule its retry, and report it."""
        previous = self.state.failures.get(version)
        attempts = previous.attempts + 1 if previous is not None else 1
        delay_s = retry_delay_s(attempts, self.retry_base_s, self.retry_max_s, self._rng)
        failure = LoadFailure(
            version, reason[:300], attempts, self.clock() + delay_s, time.time() + delay_s
        )
        others = [f for v, f in self.state.failures.items() if v != version]
        kept = [*others[-(FAILED_VERSIONS_KEPT - 1) :], failure]
        self.state.failures = {f.version: f for f in kept}
        self.metrics.model_load_failures.inc()
        log_event(
            logger, "model_load_failed", logging.ERROR, arm=self.arm, version=version,
            attempt=attempts, retry_in_s=round(delay_s, 2), error=reason[:300],
        )  # fmt: skip

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
            except Exception as exc:  # Redis unreachable: the pointer is read again next poll
                log_event(logger, "model_follow_failed", logging.WARNING, error=repr(exc)[:300])
            # a newer version held back by ``swap_cpu_share`` is looked at when its turn comes
            turn_in_s = self._forward_after - self.clock()
            woken = self._wake.wait(
                min(self.poll_interval_s, turn_in_s) if turn_in_s > 0 else self.poll_interval_s
            )
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
                    # Any message is a hint to read the pointer now; its payload is not
                    # trusted (a bogus number must not steer serving).
                    if pubsub.get_message(timeout=0.5) is not None:
                        self._wake.set()
            except REDIS_ERRORS as exc:
                self.state.pubsub_connected = False
                log_event(logger, "model_updates_disconnected", logging.WARNING, error=repr(exc))
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
            finally:
                pubsub.close()
        self.state.pubsub_connected = False
