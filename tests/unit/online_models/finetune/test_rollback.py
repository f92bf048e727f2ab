"""Which version a bare rollback (by hand, or the automatic restore) goes back to."""

from __future__ import annotations

import pytest

from online_models.finetune.rollback import choose_rollback_target
from online_models.registry.weight_registry import VersionInfo


def info(version: int, kind: str) -> VersionInfo:
    return VersionInfo(version, kind, None, f"v{version}", "0" * 64, 1, 0, 1)


VERSIONS = [info(1, "snapshot"), info(2, "delta"), info(3, "snapshot"), info(4, "delta")]


def test_goes_back_to_the_version_before_the_last_promotion() -> None:
    assert choose_rollback_target(VERSIONS, current=4, previous_current=2) == 2


def test_without_history_goes_to_the_newest_older_snapshot() -> None:
    assert choose_rollback_target(VERSIONS, current=4, previous_current=None) == 3
    assert choose_rollback_target(VERSIONS, current=3, previous_current=3) == 1


def test_falls_back_to_an_older_delta_then_refuses() -> None:
    assert choose_rollback_target([info(1, "delta"), info(2, "delta")], 2, None) == 1
    with pytest.raises(LookupError):
        choose_rollback_target(VERSIONS[:1], current=1, previous_current=None)
