"""Prometheus metrics of the online learner (``streamrec_learner_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STEP_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
EVENT_TO_WEIGHTS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
PREFIX = "streamrec_learner_"


class LearnerMetrics:
    """What one learner exports, registered on ``registry`` (tests can run several)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.examples = Counter(f"{PREFIX}examples", "Examples learned from.", registry=registry)
        self.steps = Counter(f"{PREFIX}steps", "Gradient steps applied.", registry=registry)
        self.skipped = Counter(
            f"{PREFIX}skipped_steps", "Steps skipped by a guard.", ["reason"], registry=registry
        )
        self.versions = Counter(
            f"{PREFIX}versions", "Versions published.", ["kind"], registry=registry
        )
        self.decode_errors = Counter(
            f"{PREFIX}decode_errors", "Undecodable training examples.", registry=registry
        )
        self.duplicates = Counter(
            f"{PREFIX}duplicate_examples",
            "Repeated training examples dropped (an example_id read before).",
            registry=registry,
        )
        self.unloadable_versions = Counter(
            f"{PREFIX}unloadable_versions",
            "Current versions that did not load (skipped, retried with backoff).",
            registry=registry,
        )
        self.step_seconds = Histogram(
            f"{PREFIX}step_seconds",
            "Score+update time per micro-batch.",
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.publish_seconds = Histogram(
            f"{PREFIX}publish_seconds",
            "Time to publish a version.",
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.event_to_weights_seconds = Histogram(
            f"{PREFIX}event_to_weights_seconds",
            "Source event produced to Kafka -> the version holding it current.",
            buckets=EVENT_TO_WEIGHTS_BUCKETS,
            registry=registry,
        )
        self.model_version = Gauge(
            f"{PREFIX}model_version", "Last published version.", registry=registry
        )
        self.hit_rate = Gauge(
            f"{PREFIX}hit_rate_at_20", "Prequential HR@20 of the last batch.", registry=registry
        )
        self.mrr = Gauge(
            f"{PREFIX}mrr_at_20", "Prequential MRR@20 of the last batch.", registry=registry
        )
        self.loss = Gauge(f"{PREFIX}loss", "Training loss of the last batch.", registry=registry)
        self.items = Gauge(f"{PREFIX}items", "Items in the model's table.", registry=registry)
        self.encoder_compiled = Gauge(
            f"{PREFIX}encoder_compiled",
            "1 when the encoder pass runs compiled (torch.compile), 0 when eager: "
            "STREAMREC_LEARNER_COMPILE, no C++ compiler, or a failed compile.",
            registry=registry,
        )
