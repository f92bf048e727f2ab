"""Which registry version the online learner builds on: at start, and as the pointer moves.

- **Start.** The registry's current version; when it does not load completely, the newest
  version of its lineage that does (``WeightRegistry.load_newest``: the last good delta of
  the chain, a broken snapshot's parent, an older snapshot), reported as a skip. When
  Redis lost the registry (restarted empty), the store's lineage is put back first
  (``WeightRegistry.recover_lineage``). Only a registry that never held a version, in
  Redis or in the store, is bootstrapped with an untrained model; with versions and none
  loadable the learner refuses to start (``LearnerStartError``) rather than publish an
  untrained model over a trained lineage.
- **Following.** A new current version (a fine-tune, a rollback) that loads is adopted. One
  that does not load is skipped, never looped on: the learner keeps its weights, and since
  ``followed`` becomes the broken version its next publication (compare-and-set on
  ``followed``) replaces it as current. The broken version is tried again only after a
  growing wait (``FailedVersions``), in case its blob was only late to appear.

Why these choices: reloading a broken version on every turn re-scored the same examples
and wrote a file per turn until the disk filled; stopping would halt learning (and
serving's freshness) over a storage fault the learner can route around; an untrained model
published over a trained lineage threw the training away (HR@20 0.476 -> 0.263). The one
case left to a person is a registry where nothing loads: the learner says so and stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from online_models.model.recommender import SessionRecommender
from online_models.model.weights import ModelShape, ModelWeights
from online_models.registry.failed_versions import FailedVersions
from online_models.registry.weight_registry import WeightLoadError, WeightRegistry
from streamrec.settings import ModelSettings
from streamrec.structured_log import log_event

logger = logging.getLogger(__name__)

BOOTSTRAP_SOURCE = "learner-init"


class LearnerStartError(RuntimeError):
    """Versions exist but none loads: the learner will not start over them untrained."""


@dataclass(frozen=True, slots=True)
class SkippedVersion:
    """A current version that did not load, and what the learner does instead."""

    version: int
    continued_from: int | None  # the older version loaded instead; None: weights kept
    reason: str
    retry_in_s: float
    first: bool  # its first failure (alert once per version)


class VersionFollower:
    """Tracks ``followed``: the registry version the learner's weights stand for.

    That is the learner's last publication, a version it adopted, or a current version
    that did not load; None only when no version exists anywhere any more (the learner's
    weights are then the only copy, and it publishes them as a snapshot).
    """

    def __init__(
        self,
        registry: WeightRegistry,
        model: ModelSettings,
        on_skip: Callable[[SkippedVersion], None],
        failures: FailedVersions | None = None,
    ) -> None:
        self.registry = registry
        self.model = model
        self.on_skip = on_skip
        self.failures = failures or FailedVersions()
        self.followed: int | None = None

    def start(self, now_s: float) -> ModelWeights:
        """The weights to start from (see the module docstring); sets ``followed``."""
        self.registry.recover_lineage()
        current = self.registry.current_version()
        if current is None and self.registry.is_empty():
            return self._bootstrap()
        try:
            if current is None:
                raise WeightLoadError("versions exist but none could be made current")
            weights = self.registry.load_newest(current)
        except WeightLoadError as exc:
            reason = f"no model version loads ({exc}); refusing to start an untrained model"
            log_event(logger, "learner_start_refused", logging.ERROR, reason=reason)
            raise LearnerStartError(f"{reason}: docs/runbook.md#model-version-unloadable") from exc
        self.followed = current
        if weights.version != current:
            self._skip(current, weights.version, "it does not load completely", now_s)
        return weights

    def poll(self, now_s: float) -> ModelWeights | None:
        """A new current version's weights to adopt, or None (nothing new, or skipped)."""
        current = self.registry.current_version()
        if current is None:
            current = self.registry.recover_lineage()
            if current is None:  # nothing anywhere: the learner's weights are all there is
                self.followed = None
                return None
        if current == self.followed and not self.failures.due(current, now_s):
            return None
        try:
            weights = self.registry.load(current)
        except WeightLoadError as exc:
            self._skip(current, None, str(exc), now_s)
            return None
        if weights.version != current:
            self._skip(current, None, f"only v{weights.version} of its chain loads", now_s)
            return None
        self.failures.forget(current)
        self.followed = current
        return weights

    def published(self, version: int) -> None:
        """The learner's own publication ``version`` is current."""
        self.followed = version

    def _skip(self, version: int, continued_from: int | None, reason: str, now_s: float) -> None:
        self.followed = version
        wait_s = self.failures.record(version, now_s)
        first = self.failures.attempts(version) == 1
        self.on_skip(SkippedVersion(version, continued_from, reason, wait_s, first))

    def _bootstrap(self) -> ModelWeights:
        """An untrained model as the first version of an empty registry."""
        shape = ModelShape.from_settings(self.model)
        empty = SessionRecommender(shape, self.model.initial_items).to_weights(0, [])
        publication = self.registry.publish_snapshot(empty, source=BOOTSTRAP_SOURCE)
        log_event(logger, "learner_bootstrapped", version=publication.version)
        self.followed = publication.version
        return self.registry.load(publication.version)
