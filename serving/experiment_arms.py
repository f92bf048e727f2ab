"""Experiment arms: which model lineage answers a session, sticky across requests.

A session's arm is a pure function of the experiment's ``name`` and the session id: the
first 8 bytes of ``blake2b(f"{name}:{session_id}")`` read as a number in [0, 1), then the
arm whose slice of the cumulative (normalised) traffic shares holds it. Python's
``hash()`` is salted per process, so it would move a session between arms from one worker
or restart to the next; blake2b answers the same everywhere, and changing ``name``
reshuffles every session. With the default single arm no hash is computed.

An arm is a model lineage (``streamrec.settings.ExperimentSettings``):

- ``online``: the registry's current version (the ``ModelHolder`` serving has always had);
- ``popularity``: the popular items, for every request;
- ``pinned-<N>``: version N, frozen: its own holder, followed from ``PinnedVersion``;
- ``canary``: the registry's canary pointer, followed from ``CanaryVersion``.

``ArmRouter.route`` gives the arm that really answers and its snapshot. An arm without a
model to serve (no canary rolled out, a pinned version that did not load, a follower that
has not caught up with the pointer) hands its sessions to the control arm, and they are
labelled with the control's name, so an arm's numbers only ever count its own model.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from serving.hot_swap import ModelHolder, ModelSnapshot, VersionSource
from streamrec.settings import PINNED_ARM_PREFIX, ExperimentSettings

ONLINE = "online"
POPULARITY = "popularity"
CANARY = "canary"


def assignment_point(name: str, session_id: str) -> float:
    """The session's stable, uniform position in [0, 1) for experiment ``name``."""
    digest = hashlib.blake2b(f"{name}:{session_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True, slots=True)
class ArmAssignment:
    """Arms and the upper ends of their slices of [0, 1) (cumulative normalised shares)."""

    name: str
    arms: tuple[str, ...]
    bounds: tuple[float, ...]

    @classmethod
    def from_shares(cls, name: str, shares: Mapping[str, float]) -> ArmAssignment:
        total = sum(shares.values())
        bounds: list[float] = []
        running = 0.0
        for share in shares.values():
            running += share / total
            bounds.append(running)
        bounds[-1] = 1.0  # rounding must not leave a sliver of [0, 1) without an arm
        return cls(name, tuple(shares), tuple(bounds))

    @classmethod
    def from_settings(cls, settings: ExperimentSettings) -> ArmAssignment:
        return cls.from_shares(settings.name, settings.arms)

    def arm_of(self, session_id: str) -> str:
        """The session's arm; the same answer in every process, on every call."""
        if len(self.arms) == 1:
            return self.arms[0]
        # An arm with share 0 has an empty slice, which bisect_right steps over.
        return self.arms[bisect_right(self.bounds, assignment_point(self.name, session_id))]


def pinned_version(arm: str) -> int | None:
    """N for a ``pinned-<N>`` arm, None for any other arm."""
    return int(arm.removeprefix(PINNED_ARM_PREFIX)) if arm.startswith(PINNED_ARM_PREFIX) else None


class CanaryRegistry(VersionSource, Protocol):
    """The weight registry, with its canary pointer."""

    def canary_version(self) -> int | None: ...


class PinnedVersion:
    """A version source whose current version is always one version (a pinned arm)."""

    def __init__(self, registry: VersionSource, version: int) -> None:
        self.registry = registry
        self.wanted: int | None = version

    def current_version(self) -> int | None:
        return self.wanted

    def load(self, version: int | None = None, base: Any = None) -> Any:
        return self.registry.load(version, base)


class CanaryVersion:
    """A version source whose current version is the registry's canary pointer.

    ``wanted`` keeps the pointer as last read by the follower's thread (each poll and
    each announcement), so a request knows without a Redis call whether the snapshot it
    holds is still the canary.
    """

    def __init__(self, registry: CanaryRegistry) -> None:
        self.registry = registry
        self.wanted: int | None = None

    def current_version(self) -> int | None:
        self.wanted = self.registry.canary_version()
        return self.wanted

    def load(self, version: int | None = None, base: Any = None) -> Any:
        return self.registry.load(version, base)


@dataclass(frozen=True, slots=True)
class ArmModel:
    """A pinned or canary arm's holder and the version it should serve."""

    holder: ModelHolder
    source: PinnedVersion | CanaryVersion

    def snapshot(self) -> ModelSnapshot | None:
        """The arm's snapshot when it is the version the arm serves now, else None."""
        current = self.holder.current
        if current is None or current.version != self.source.wanted:
            return None
        return current


class ArmRouter:
    """The arm that answers a session and the snapshot it answers with (see module doc)."""

    def __init__(
        self,
        assignment: ArmAssignment,
        control: str,
        online: ModelHolder,
        models: Mapping[str, ArmModel],
    ) -> None:
        self.assignment = assignment
        self.control = control
        self.online = online
        self.models = models

    def route(self, session_id: str) -> tuple[str, ModelSnapshot | None]:
        """(arm, snapshot); a None snapshot means the popular items answer."""
        arm = self.assignment.arm_of(session_id)
        if arm == ONLINE:
            return arm, self.online.current
        return self.resolve(arm)

    def resolve(self, arm: str) -> tuple[str, ModelSnapshot | None]:
        """``arm``'s own model, else the control's; the online model when neither has one."""
        for candidate in (arm, self.control):
            if candidate == ONLINE:
                return candidate, self.online.current
            if candidate == POPULARITY:
                return candidate, None
            snapshot = self.models[candidate].snapshot()
            if snapshot is not None:
                return candidate, snapshot
        return ONLINE, self.online.current
