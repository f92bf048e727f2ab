"""Each server worker learns its index before the app factory reads the settings."""

from __future__ import annotations

import pytest

from serving.server import WORKER_INDEX_ENV, load_in_worker
from streamrec.settings import load_settings


def test_the_factory_of_a_worker_reads_that_workers_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(WORKER_INDEX_ENV, "0")  # restored after the test
    indexes = [
        load_in_worker(index, lambda: load_settings().serving.worker_index) for index in (2, 1)
    ]
    assert indexes == [2, 1]
