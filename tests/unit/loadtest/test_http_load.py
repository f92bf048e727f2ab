"""The benchmark's load generator and swap accounting."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.bench.serving import failed_during_swaps, learner_deltas, swap_load_ms
from loadtest.http_load import build_request, drive


async def serve_stub(statuses: list[int]) -> asyncio.Server:
    """A keep-alive HTTP/1.1 stub answering with the given statuses in turn."""
    calls = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                status = statuses[min(calls, len(statuses) - 1)]
                calls += 1
                body = b'{"model_version":%d}' % (1 + calls // 50)
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_drive_counts_requests_errors_and_versions() -> None:
    async def main():  # type: ignore[no-untyped-def]
        server = await serve_stub([200] * 10 + [500] + [200])
        port = server.sockets[0].getsockname()[1]
        request = build_request("127.0.0.1", port, "/x", token="t")
        result = await drive("127.0.0.1", port, [request], concurrency=2, duration_s=0.3)
        server.close()
        return result

    result = asyncio.run(main())
    assert result.requests > 50
    assert result.errors == 1
    assert result.error_samples[0].startswith("500")
    assert 1 in result.version_first_seen_s and len(result.version_first_seen_s) >= 2
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms


def test_build_request_carries_the_token() -> None:
    raw = build_request("h", 1, "/recommend?session_id=s", token="abc")
    assert raw.startswith(b"GET /recommend?session_id=s HTTP/1.1\r\n")
    assert b"Authorization: Bearer abc\r\n" in raw and raw.endswith(b"\r\n\r\n")


def test_only_errors_near_a_publish_count_as_failed_during_swap() -> None:
    load = {"measure_started_monotonic": 100.0, "error_times_s": [1.0, 5.2, 9.0]}
    assert failed_during_swaps(load, [105.0]) == 1
    assert failed_during_swaps(load, []) == 0


def test_swap_load_times_come_from_every_swap_after_a_workers_first(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        "granian listening\n"
        '{"event":"model_swapped","source":"startup","load_ms":1400.0,"load_cpu_ms":1300.0}\n'
        '{"event":"model_swapped","source":"pubsub","load_ms":210.5,"load_cpu_ms":150.0}\n'
        '{"event":"model_load_failed","version":3}\n'
        '{"event":"model_swapped","source":"poll","load_ms":190.0,"load_cpu_ms":120.5}\n'
    )
    assert swap_load_ms(log) == [210.5, 190.0]
    assert swap_load_ms(log, "load_cpu_ms") == [150.0, 120.5]


class RecordingRegistry:
    def __init__(self) -> None:
        self.deltas: list[Any] = []

    def current_version(self) -> int:
        return len(self.deltas) + 1

    def publish_delta(self, delta: Any, source: str) -> None:
        self.deltas.append(delta)


def test_the_bench_reports_the_rows_its_deltas_hold_not_the_rows_it_drew() -> None:
    moved: list[int] = []
    publish = learner_deltas(n_items=50, hidden=4, rows=40, new_items=3, moved=moved)
    registry, rng = RecordingRegistry(), np.random.default_rng(0)
    for _ in range(3):
        publish(registry, rng)
    assert moved == [len(delta.rows) for delta in registry.deltas]
    assert all(m < 43 for m in moved)  # 40 draws from 50 rows repeat some
    assert [d.start_row for d in registry.deltas] == [50, 53, 56]
