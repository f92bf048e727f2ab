"""The knobs of the feature logic, shared by the flow's shards and the offline example builder.

Resolved once from ``FlowSettings``: offline training, evaluation and the benchmarks build
examples with the same history length, lateness and purchase weight as the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamrec.settings import FlowSettings


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """History length, lateness and purchase weight of examples; TTL and inputs of a shard;
    the horizon and bound of its exposure join.

    ``input_topics`` counts the feature topics (clicks, purchases) whose event time drives
    eviction; impressions do not hold it back."""

    history_len: int = 50
    lateness_ms: int = 5000
    session_ttl_ms: int = 7 * 86_400_000
    purchase_weight: float = 5.0
    input_topics: int = 2
    exposure_horizon_ms: int = 600_000
    exposure_max_open: int = 20_000
    click_events: bool = True  # write each click's event id and time to the session hash

    @classmethod
    def from_settings(cls, settings: FlowSettings) -> FeatureConfig:
        return cls(
            history_len=settings.history_len,
            lateness_ms=int(settings.lateness_s * 1000),
            session_ttl_ms=settings.session_ttl_s * 1000,
            purchase_weight=settings.purchase_weight,
            exposure_horizon_ms=int(settings.exposure_horizon_s * 1000),
            exposure_max_open=settings.exposure_max_open,
            click_events=settings.click_events,
        )
