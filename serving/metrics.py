"""Prometheus metrics of the serving process (one set per worker process).

Names follow ``streamrec_serving_<what>_<unit>``; labels are few and bounded (route and
status class; the configured experiment arms). The registry is passed in: each app (one
per worker) builds its own and renders it at ``/metrics``, so tests can build several apps
in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)


class ServingMetrics:
    """Counters, gauges and histograms of one serving process, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.requests = Counter(
            "streamrec_serving_requests_total",
            "HTTP requests answered, by route and status code.",
            ("route", "status"),
            registry=r,
        )
        self.request_seconds = Histogram(
            "streamrec_serving_request_duration_seconds",
            "Time spent answering /recommend, in the handler (explain=true requests apart).",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.fallbacks = Counter(
            "streamrec_serving_fallbacks_total",
            "Recommendations answered from popular items (unknown or empty session).",
            registry=r,
        )
        self.redis_errors = Counter(
            "streamrec_serving_redis_errors_total",
            "Redis calls on the request path that failed or timed out (answered 503).",
            registry=r,
        )
        self.unreadable_keys = Counter(
            "streamrec_serving_unreadable_keys_total",
            "Keys read as empty because of bad data: a corrupt session hash or a wrong type.",
            ("key", "reason"),
            registry=r,
        )
        self.score_batch_size = Histogram(
            "streamrec_serving_score_batch_size",
            "Sessions scored together in one model call (micro-batching).",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=r,
        )
        self.model_version = Gauge(
            "streamrec_serving_model_version", "Version of the model now serving.", registry=r
        )
        self.model_loaded_at = Gauge(
            "streamrec_serving_model_loaded_at_seconds",
            "Unix time the serving model was swapped in.",
            registry=r,
        )
        self.model_swaps = Counter(
            "streamrec_serving_model_swaps_total", "Model versions swapped in.", registry=r
        )
        self.model_load_seconds = Histogram(
            "streamrec_serving_model_load_duration_seconds",
            "Time to load a version and build its scorer (off the request path).",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.model_load_failures = Counter(
            "streamrec_serving_model_load_failures_total",
            "Failed loads of a version (any error, non-finite, registry fell back); retried.",
            registry=r,
        )
        self.impressions = Counter(
            "streamrec_serving_impressions_total",
            "Impression events by outcome (sent, dropped when the queue is full, failed).",
            ("outcome",),
            registry=r,
        )
        self.arm_requests = Counter(
            "streamrec_serving_arm_requests_total",
            "Recommendations answered, by the experiment arm that answered them.",
            ("arm",),
            registry=r,
        )
        self.arm_fallbacks = Counter(
            "streamrec_serving_arm_fallbacks_total",
            "Recommendations an arm's model could not answer (popular items instead), by arm.",
            ("arm",),
            registry=r,
        )
        self.arm_model_version = Gauge(
            "streamrec_serving_arm_model_version",
            "Version a pinned or canary arm serves (absent until one is loaded), by arm.",
            ("arm",),
            registry=r,
        )
        self.explored_items = Counter(
            "streamrec_serving_explored_items_total",
            "New items placed in a list by an exploration slot.",
            registry=r,
        )
        self.explain_requests = Counter(
            "streamrec_serving_explain_requests_total",
            "/recommend requests with explain=true answered (not in the latency histogram).",
            registry=r,
        )
