"""Quantiles from scraped histograms match Prometheus' histogram_quantile."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from loadtest.prometheus_scrape import bucket_delta, histogram_quantile, parse_metrics


def test_counters_and_histogram_deltas_from_a_real_exposition() -> None:
    registry = CollectorRegistry()
    seen = Counter("streamrec_test_events", "events", ["topic"], registry=registry)
    latency = Histogram(
        "streamrec_test_seconds", "latency", buckets=(0.01, 0.1, 1.0), registry=registry
    )
    seen.labels("clicks").inc(3)
    seen.labels("purchases").inc(2)
    for _ in range(100):
        latency.observe(0.5)
    before = parse_metrics(generate_latest(registry).decode())
    for _ in range(100):
        latency.observe(0.005)
    after = parse_metrics(generate_latest(registry).decode())

    assert after.value("streamrec_test_events_total") == 5
    assert after.value("streamrec_test_events_total", topic="clicks") == 3
    delta = bucket_delta(
        after.buckets["streamrec_test_seconds"], before.buckets["streamrec_test_seconds"]
    )
    assert delta[0.01] == 100 and delta[math.inf] == 100
    assert 0 < histogram_quantile(0.99, delta) <= 0.01
    assert 0.1 < histogram_quantile(0.99, after.buckets["streamrec_test_seconds"]) <= 1.0


def test_quantile_interpolates_and_handles_empty_and_overflow() -> None:
    assert math.isnan(histogram_quantile(0.5, {1.0: 0, math.inf: 0}))
    assert histogram_quantile(0.5, {1.0: 0, 2.0: 10, math.inf: 10}) == 1.5
    assert histogram_quantile(0.99, {1.0: 1, math.inf: 10}) == 1.0
