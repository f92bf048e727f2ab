"""A cluster batch's retries: a changed slot map or a node away is retried, bounded."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis

from flows.cluster_batch import ClusterBatch


def batch_failing(failures: int, map_failures: int) -> tuple[ClusterBatch, dict[str, int]]:
    """A batch whose first ``failures`` sends fail, on a client whose first
    ``map_failures`` slot-map reads fail too."""
    counts = {"sends": 0, "maps": 0}

    def initialize() -> None:
        counts["maps"] += 1
        if counts["maps"] <= map_failures:
            raise redis.ConnectionError("no seed answers")

    client: Any = SimpleNamespace(nodes_manager=SimpleNamespace(initialize=initialize))
    batch = ClusterBatch(
        client, None, list, sessions_per_script=100, retries=3, backoff_s=lambda _: 0.0
    )  # type: ignore[arg-type]

    def send() -> None:
        counts["sends"] += 1
        if counts["sends"] <= failures:
            raise redis.ConnectionError("node away")

    batch._send = send  # type: ignore[method-assign]
    return batch, counts


def test_a_failed_send_is_retried_even_when_the_slot_map_cannot_be_read_yet() -> None:
    batch, counts = batch_failing(failures=2, map_failures=1)
    batch.execute()
    assert counts == {"sends": 3, "maps": 2}


def test_retries_are_bounded_and_the_last_error_raised() -> None:
    batch, counts = batch_failing(failures=10, map_failures=0)
    with pytest.raises(redis.ConnectionError, match="node away"):
        batch.execute()
    assert counts == {"sends": 4, "maps": 3}
