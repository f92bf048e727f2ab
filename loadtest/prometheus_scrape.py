"""Reading the loop's Prometheus endpoints: counters, gauges and histogram quantiles.

Load tests and the demo measure the running system the way an operator's Prometheus
would: by scraping ``/metrics`` and taking quantiles of histogram *deltas* over the run
(``histogram_quantile`` over ``increase``), so earlier traffic does not blur the result.
"""

from __future__ import annotations

import math
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass(slots=True)
class Scrape:
    """One scrape: plain samples by (name, labels) and histogram buckets by metric name."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, sample_labels), value in self.samples.items()
            if sample == name and wanted <= set(sample_labels)
        )


def parse_metrics(text: str) -> Scrape:
    """Parse Prometheus text exposition; histogram buckets are summed over label sets."""
    scrape = Scrape()
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            if sample.name.endswith("_bucket") and "le" in labels:
                bound = float(labels.pop("le"))
                buckets[sample.name[: -len("_bucket")]][bound] += sample.value
                continue
            key = (sample.name, tuple(sorted(labels.items())))
            scrape.samples[key] = scrape.samples.get(key, 0.0) + sample.value
    scrape.buckets = {name: dict(b) for name, b in buckets.items()}
    return scrape


def scrape(url: str, timeout_s: float = 2.0) -> Scrape | None:
    """Scrape ``url``; None when the endpoint does not answer (a process restarting)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - local
            return parse_metrics(response.read().decode())
    except OSError:
        return None


def bucket_delta(
    after: dict[float, float], before: dict[float, float] | None
) -> dict[float, float]:
    """Cumulative bucket counts observed between two scrapes."""
    before = before or {}
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket.

    ``buckets`` maps upper bounds (``inf`` included) to cumulative counts. Returns NaN
    when nothing was observed; the lower bound of the ``+Inf`` bucket when the quantile
    falls there (so an overflow reads as "at least this much").
    """
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return math.nan
    total = ordered[-1][1]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (
                count - previous_count
            )
        previous_bound, previous_count = bound, count
    return previous_bound
