"""The knobs of the feature logic, shared by the flow's shards and the offline example builder.

Resolved once from ``FlowSettings``: offline training, evaluation and the benchmarks build
examples with the same history length, lateness and purchase weight as the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamrec.settings import FlowSettings


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """History length, lateness and purchase weight of examples; TTL and inputs of a shard."""

    history_len: int = 50
    lateness_ms: int = 5000
    session_ttl_ms: int = 7 * 86_400_000
    purchase_weight: float = 5.0
    input_topics: int = 2

    @classmethod
    def from_settings(cls, settings: FlowSettings) -> FeatureConfig:
        return cls(
            history_len=settings.history_len,
            lateness_ms=int(settings.lateness_s * 1000),
            session_ttl_ms=settings.session_ttl_s * 1000,
            purchase_weight=settings.purchase_weight,
        )
