"""Failed versions are retried with a growing, bounded wait; names and headers round-trip."""

from __future__ import annotations

import doctest

from hypothesis import given
from hypothesis import strategies as st

import online_models.registry.failed_versions
from online_models.model.recommender import random_weights
from online_models.registry.blobs import encode_delta, encode_snapshot, read_header
from online_models.registry.failed_versions import FailedVersions
from online_models.registry.version_info import BlobName, VersionInfo
from tests.unit.online_models.registry.test_blobs import SMALL, _delta


def test_the_docstring_examples_hold() -> None:
    assert doctest.testmod(online_models.registry.failed_versions).failed == 0


@given(failures=st.integers(1, 30), first=st.floats(0.1, 5.0), cap=st.floats(5.0, 600.0))
def test_waits_double_up_to_the_cap_and_a_version_is_never_due_before(
    failures: int, first: float, cap: float
) -> None:
    tracker = FailedVersions(first_wait_s=first, max_wait_s=cap)
    now = 0.0
    waits = []
    for _ in range(failures):
        wait = tracker.record(3, now)
        assert not tracker.due(3, now + wait * 0.999)
        assert tracker.due(3, now + wait)
        waits.append(wait)
        now += wait
    assert waits == sorted(waits) and max(waits) <= cap
    assert tracker.attempts(3) == failures


def test_a_version_that_loaded_is_forgotten_and_memory_is_bounded() -> None:
    tracker = FailedVersions(capacity=3)
    for version in range(5):
        tracker.record(version, 0.0)
    assert [tracker.attempts(v) for v in range(5)] == [0, 0, 1, 1, 1]
    tracker.forget(4)
    assert tracker.attempts(4) == 0 and not tracker.due(4, 1e9)


def test_blob_names_carry_version_kind_and_digest() -> None:
    name = BlobName(42, "delta", "ab" * 32)
    assert str(name) == f"v0000000042.delta.{'ab' * 32}.safetensors"
    assert BlobName.parse(str(name)) == name
    old = BlobName.parse("v0000000007.snapshot.safetensors")  # before names had digests
    assert old == BlobName(7, "snapshot", None)
    assert BlobName.parse(".v0000000007.snapshot.safetensors.x1.tmp") is None


def test_a_versions_metadata_is_read_back_from_its_blob_header() -> None:
    weights = random_weights(5, SMALL)
    info = VersionInfo(
        9, "snapshot", 4, "f", "s", 0, 1234, 5, examples_seen=77, source="learner",
        metrics={"hr": 0.5}, offsets={"t:0": 12},
    )  # fmt: skip
    blob = encode_snapshot(weights, info.header_info())
    back = VersionInfo.from_header(read_header(blob, len(blob)), "f", "s", 0)
    assert back.n_items == 5 and back.examples_seen == 77 and back.offsets == {"t:0": 12}
    assert (back.created_ms, back.source, back.metrics) == (1234, "learner", {"hr": 0.5})
    delta = encode_delta(_delta(weights, ["x", "y"]), "")
    assert VersionInfo.from_header(read_header(delta, len(delta)), "d", "s", 0).n_items == 7
