"""Each server worker learns its index before the app factory reads the settings, and
gets the server's environment defaults unless the operator set them."""

from __future__ import annotations

import pytest

from serving.server import WORKER_INDEX_ENV, apply_worker_defaults, load_in_worker
from streamrec.settings import load_settings


def test_the_factory_of_a_worker_reads_that_workers_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(WORKER_INDEX_ENV, "0")  # restored after the test
    indexes = [
        load_in_worker(index, lambda: load_settings().serving.worker_index) for index in (2, 1)
    ]
    assert indexes == [2, 1]


def test_workers_get_plain_pages_for_numpy_unless_the_environment_chose() -> None:
    defaults: dict[str, str] = {}
    apply_worker_defaults(defaults)
    assert defaults == {"NUMPY_MADVISE_HUGEPAGE": "0"}
    chosen = {"NUMPY_MADVISE_HUGEPAGE": "1"}
    apply_worker_defaults(chosen)
    assert chosen == {"NUMPY_MADVISE_HUGEPAGE": "1"}
