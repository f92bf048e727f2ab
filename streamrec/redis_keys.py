"""The Redis key layout: every key streamrec reads or writes is built here.

All keys start with the configured ``key_prefix`` so deployments and tests can share a
server. The fields of the session hash are defined by ``streamrec/session_features.py``.

On a Redis Cluster a script, a transaction or a multi-key command may only touch keys of
one hash slot, so keys used together carry one hash tag (the part in braces, which alone
decides the slot): the registry's keys and channels share ``{model}`` (its scripts and
transactions), the popularity zset and its rebuild scratch share ``{popular}`` (RENAME).
The tag follows the prefix, so every key still matches ``<prefix>:*``; deployments sharing
a cluster under several prefixes share those two slots (small, rarely written keys). Every
other key is used alone; session hashes, one per session, spread over the whole cluster.
The flow's marker is one key per cluster primary (``flows/redis_resync.py``).

Layout (``{p}`` is the prefix, ``{sid}`` a session id, ``{n}`` a number; ``{model}`` and
``{popular}`` are written as they stand, braces included):

| key | type | written by | holds |
|---|---|---|---|
| ``{p}:sess:{sid}`` | hash | flow | all of a session's features (one HGETALL reads them) |
| ``{p}:{popular}`` | zset | flow | recent item popularity (fallback recommendations) |
| ``{p}:{popular}:rebuild`` | zset | flow | scratch filled, then RENAMEd onto the zset |
| ``{p}:{model}:current`` | string | learner | current model version number |
| ``{p}:{model}:v:{n}`` | hash | learner | metadata of version n |
| ``{p}:{model}:versions`` | zset | learner | version numbers by creation time |
| ``{p}:{model}:updates`` | pub/sub channel | learner | version numbers as they are published |
| ``{p}:{model}:canary`` | string | fine-tune, canary watch | version served by the ``canary`` arm |
| ``{p}:{model}:canary:updates`` | pub/sub channel | registry | canary version, ``""``: cleared |
| ``{p}:alerts`` | stream | drift monitor | alert events |
| ``{p}:{model}:seq`` | string | registry | last allocated version number (INCR) |
| ``{p}:learner:signals`` | stream | learner | per-micro-batch prequential metrics |
| ``{p}:drift:status`` | hash | drift, fine-tune | last drift, last fine-tune and verdict |
| ``{p}:drift:finetune_lock`` | string | drift, fine-tune | held during fine-tune + cooldown |
| ``{p}:item:category`` | hash | flow | item id -> category (serving's category filter) |
| ``{p}:flow:marker`` | string | flow | the Redis generation the flow wrote its state to |
| ``{p}:flow:marker:{n}`` | string | flow | on a cluster: the same, one per primary |
| ``{p}:items:shown`` | hash | flow | item id -> times shown (exploration's exposure) |
| ``{p}:items:clicked`` | hash | flow | item id -> clicks on it from a list |
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Key builders for one prefix."""

    prefix: str

    @property
    def _model(self) -> str:
        """The registry's hash tag: its keys and channels share one cluster slot."""
        return f"{self.prefix}:{{model}}"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}:sess:{session_id}"

    def session_pattern(self) -> str:
        """SCAN pattern matching every session hash."""
        return f"{self.prefix}:sess:*"

    @property
    def popular(self) -> str:
        return f"{self.prefix}:{{popular}}"

    @property
    def model_current(self) -> str:
        return f"{self._model}:current"

    def model_version(self, version: int) -> str:
        return f"{self._model}:v:{version}"

    @property
    def model_versions(self) -> str:
        return f"{self._model}:versions"

    @property
    def model_updates(self) -> str:
        return f"{self._model}:updates"

    @property
    def model_canary(self) -> str:
        """The version the ``canary`` experiment arm serves (absent: no canary)."""
        return f"{self._model}:canary"

    @property
    def model_canary_updates(self) -> str:
        """Channel announcing canary changes: the version number, or ``""`` when cleared."""
        return f"{self._model}:canary:updates"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}:alerts"

    @property
    def model_sequence(self) -> str:
        """Counter that hands out version numbers (INCR), shared by learner and fine-tune."""
        return f"{self._model}:seq"

    @property
    def learner_signals(self) -> str:
        """Stream of per-micro-batch learner signals (read by the drift monitor)."""
        return f"{self.prefix}:learner:signals"

    @property
    def drift_status(self) -> str:
        """Hash of the last drift alert and the last fine-tune (shown by ``model status``)."""
        return f"{self.prefix}:drift:status"

    @property
    def finetune_lock(self) -> str:
        """Set with a TTL while a fine-tune runs and for its cooldown (prevents storms)."""
        return f"{self.prefix}:drift:finetune_lock"

    @property
    def item_categories(self) -> str:
        """Hash of item id -> category, read by serving for its category filter."""
        return f"{self.prefix}:item:category"

    @property
    def flow_marker(self) -> str:
        """Set by the flow, never expires: when it is gone, Redis lost the flow's keys and the
        flow writes its whole state again (flows/redis_resync.py). On a cluster, the base
        name of one marker per primary (``redis_connection.primary_keys``)."""
        return f"{self.prefix}:flow:marker"

    @property
    def popular_rebuild(self) -> str:
        """Scratch zset the flow fills and RENAMEs onto ``popular`` when it rebuilds it
        (same hash tag: RENAME needs both in one cluster slot)."""
        return f"{self.popular}:rebuild"

    @property
    def item_shown(self) -> str:
        """Hash of item id -> times shown in a list (impressions), read by exploration."""
        return f"{self.prefix}:items:shown"

    @property
    def item_clicked(self) -> str:
        """Hash of item id -> clicks on it from a list it was shown in."""
        return f"{self.prefix}:items:clicked"
