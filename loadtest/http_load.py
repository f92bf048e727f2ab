"""A closed-loop HTTP/1.1 load generator: fixed concurrency, keep-alive, latency per request.

It runs as its own process (``python -m loadtest.http_load``) so the server under test
never shares an interpreter with the client. Each of ``concurrency`` connections sends one
request, waits for the whole response and sends the next, so the offered load adapts to the
server (closed loop) and the latency of every request is measured end to end. The client is
plain asyncio streams with minimal parsing, so a single process can drive several thousand
requests per second on one core.

A non-200 status, a broken connection or a response slower than ``timeout_s`` counts as an
error. The ``model_version`` field of each 200 body is read (a byte search, not a JSON
parse) to report when each version was first served, which the serving benchmark uses to
count swaps seen by clients.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson

_VERSION = re.compile(rb'"model_version":(\d+)')


@dataclass(slots=True)
class LoadResult:
    """What one run measured; latencies in milliseconds, times in seconds since the start."""

    requests: int = 0
    warmup_requests: int = 0
    errors: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    error_times_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    version_first_seen_s: dict[int, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Tally:
    started: float
    latencies_ns: list[int] = field(default_factory=list)
    error_times_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    versions: dict[int, float] = field(default_factory=dict)
    next_index: int = 0

    def error(self, detail: str) -> None:
        self.error_times_s.append(time.monotonic() - self.started)
        if len(self.error_samples) < 10:
            self.error_samples.append(detail[:300])


def build_request(host: str, port: int, target: str, token: str = "") -> bytes:
    """The raw bytes of a keep-alive GET request for ``target`` (path and query)."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n".encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
            break
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _connection(
    host: str, port: int, requests: list[bytes], tally: _Tally, stop_at: float, timeout_s: float
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < stop_at:
            request = requests[tally.next_index % len(requests)]
            tally.next_index += 1
            start = time.perf_counter_ns()
            try:
                writer.write(request)
                status, body = await asyncio.wait_for(read_response(reader), timeout_s)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                tally.error(f"{type(exc).__name__}: {exc}")
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            tally.latencies_ns.append(time.perf_counter_ns() - start)
            if status != 200:
                tally.error(f"{status} {body[:200]!r}")
                continue
            found = _VERSION.search(body)
            if found:
                version = int(found.group(1))
                if version not in tally.versions:
                    tally.versions[version] = time.monotonic() - tally.started
    finally:
        writer.close()


async def drive(
    host: str,
    port: int,
    requests: list[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.0,
    timeout_s: float = 5.0,
) -> LoadResult:
    """Send ``requests`` round-robin over ``concurrency`` connections for ``duration_s``.

    A warm-up period (not measured) runs first on the same connections' server.
    """
    warm = _Tally(time.monotonic())
    if warmup_s > 0:
        stop = time.monotonic() + warmup_s
        await asyncio.gather(
            *(_connection(host, port, requests, warm, stop, timeout_s) for _ in range(concurrency))
        )
    tally = _Tally(time.monotonic())
    stop = tally.started + duration_s
    await asyncio.gather(
        *(_connection(host, port, requests, tally, stop, timeout_s) for _ in range(concurrency))
    )
    elapsed = time.monotonic() - tally.started
    result = summarize(tally.latencies_ns, tally, elapsed)
    result.warmup_requests = len(warm.latencies_ns)
    return result


def summarize(latencies_ns: list[int], tally: _Tally, elapsed_s: float) -> LoadResult:
    """Percentiles and rates from raw latencies."""
    result = LoadResult(
        requests=len(latencies_ns),
        errors=len(tally.error_times_s),
        duration_s=round(elapsed_s, 3),
        error_times_s=[round(t, 3) for t in tally.error_times_s],
        error_samples=tally.error_samples,
        version_first_seen_s={v: round(t, 3) for v, t in tally.versions.items()},
    )
    if latencies_ns:
        ms = np.asarray(latencies_ns, dtype=np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        result.rps = round(len(latencies_ns) / elapsed_s, 1)
        result.p50_ms = round(float(p50), 3)
        result.p90_ms = round(float(p90), 3)
        result.p99_ms = round(float(p99), 3)
        result.max_ms = round(float(ms.max()), 3)
    return result


def main(argv: list[str] | None = None) -> None:
    """Run from the command line; prints the ``LoadResult`` as one JSON line on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--targets", type=Path, required=True, help="One path+query a line.")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--token", default="")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.read_text().splitlines() if t]
    requests = [build_request(args.host, args.port, t, args.token) for t in targets]
    result = asyncio.run(
        drive(args.host, args.port, requests, args.concurrency, args.duration_s, args.warmup_s)
    )
    sys.stdout.write(orjson.dumps(asdict(result), option=orjson.OPT_NON_STR_KEYS).decode() + "\n")


if __name__ == "__main__":
    main()
