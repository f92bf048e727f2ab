"""Prometheus metrics of the online learner (``streamrec_learner_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STEP_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
EVENT_TO_WEIGHTS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class LearnerMetrics:
    examples: Counter
    steps: Counter
    skipped: Counter
    versions: Counter
    decode_errors: Counter
    step_seconds: Histogram
    publish_seconds: Histogram
    event_to_weights_seconds: Histogram
    model_version: Gauge
    hit_rate: Gauge
    mrr: Gauge
    loss: Gauge
    items: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> LearnerMetrics:
        """Metrics registered on ``registry`` (one per learner, so tests can run several)."""
        prefix = "streamrec_learner_"
        return cls(
            examples=Counter(f"{prefix}examples", "Examples learned from.", registry=registry),
            steps=Counter(f"{prefix}steps", "Gradient steps applied.", registry=registry),
            skipped=Counter(
                f"{prefix}skipped_steps", "Steps skipped by a guard.", ["reason"], registry=registry
            ),
            versions=Counter(
                f"{prefix}versions", "Versions published.", ["kind"], registry=registry
            ),
            decode_errors=Counter(
                f"{prefix}decode_errors", "Undecodable training examples.", registry=registry
            ),
            step_seconds=Histogram(
                f"{prefix}step_seconds",
                "Score+update time per micro-batch.",
                buckets=STEP_BUCKETS,
                registry=registry,
            ),  # fmt: skip
            publish_seconds=Histogram(
                f"{prefix}publish_seconds",
                "Time to publish a version.",
                buckets=STEP_BUCKETS,
                registry=registry,
            ),  # fmt: skip
            event_to_weights_seconds=Histogram(
                f"{prefix}event_to_weights_seconds",
                "Source event produced to Kafka -> the version holding it current.",
                buckets=EVENT_TO_WEIGHTS_BUCKETS,
                registry=registry,
            ),  # fmt: skip
            model_version=Gauge(
                f"{prefix}model_version", "Last published version.", registry=registry
            ),
            hit_rate=Gauge(
                f"{prefix}hit_rate_at_20", "Prequential HR@20 of the last batch.", registry=registry
            ),
            mrr=Gauge(
                f"{prefix}mrr_at_20", "Prequential MRR@20 of the last batch.", registry=registry
            ),
            loss=Gauge(f"{prefix}loss", "Training loss of the last batch.", registry=registry),
            items=Gauge(f"{prefix}items", "Items in the model's table.", registry=registry),
        )
