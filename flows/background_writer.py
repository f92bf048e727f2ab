"""Run blocking writes on one background thread, in submission order.

The flow's Redis round trip (and the server's time on it) would otherwise stall the Bytewax
worker; here the worker computes the next batch while the previous one is written.
Guarantees: jobs run one at a time in the order submitted; ``drain`` returns once every
submitted job has finished; a failed job makes the next ``submit`` or ``drain`` raise, so
the flow stops and restarts from its last snapshot instead of skipping a write. At most
``max_pending`` jobs wait, which pushes back on the worker when the store is slower.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class BackgroundWriter:
    """An ordered, bounded queue of write jobs served by one daemon thread."""

    def __init__(self, name: str, max_pending: int = 4) -> None:
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; blocks while ``max_pending`` jobs already wait."""
        self._raise_failure()
        self._jobs.put(job)

    def drain(self) -> None:
        """Wait until every submitted job has run; raise if one failed."""
        self._jobs.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise RuntimeError("a background write failed") from self._error

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if self._error is None:
                    job()
            except BaseException as exc:  # noqa: BLE001 - handed to the worker thread
                self._error = exc
            finally:
                self._jobs.task_done()
