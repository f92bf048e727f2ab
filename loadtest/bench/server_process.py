"""The server process of ``streamrec bench serving``: its environment, readiness, the
load-generator runs against it and the CPU each side spent per request."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from streamrec.settings import Settings

console = Console(stderr=True)
LOAD_WARMUP_S = 1.0


def serve_env(settings: Settings, workers: int) -> dict[str, str]:
    """The environment of a benchmark's server: its private prefixes, no auth, and INFO
    logs (none per request; each hot swap logs its load time)."""
    return os.environ | {
        "STREAMREC_KEY_PREFIX": settings.redis.key_prefix,
        "STREAMREC_TOPIC_PREFIX": settings.kafka.topic_prefix,
        "STREAMREC_MODEL_STORE_DIR": str(settings.model.store_dir),
        "STREAMREC_SERVING_WORKERS": str(workers),
        "STREAMREC_SERVING_AUTH_TOKEN": "",
        "STREAMREC_LOG_LEVEL": "INFO",
    }


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its descendants (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, IndexError, ValueError):
            continue
    return total


def run_load(
    port: int,
    targets: list[str],
    concurrency: int,
    duration_s: float,
    workdir: Path,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Run the load generator in its own process; return its result.

    Also measures the CPU the server (``server_pid`` and its workers) and the client spent
    per request: unlike rps, that does not depend on what else shares the machine.
    """
    path = workdir / f"targets-{uuid.uuid4().hex[:6]}.txt"
    path.write_text("\n".join(targets) + "\n")
    server_cpu = process_tree_cpu_s(server_pid) if server_pid else 0.0
    client_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.http_load",
            "--port",
            str(port),
            "--targets",
            str(path),
            "--concurrency",
            str(concurrency),
            "--duration-s",
            str(duration_s),
            "--warmup-s",
            str(LOAD_WARMUP_S),
        ],
        check=True,
        capture_output=True,
    )
    result = orjson.loads(out.stdout)
    # The generator measures from the end of its warm-up.
    result["measure_started_monotonic"] = started + LOAD_WARMUP_S
    answered = max(1, result["requests"] + result["warmup_requests"])
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_s = (client_after.ru_utime - client_cpu.ru_utime) + (
        client_after.ru_stime - client_cpu.ru_stime
    )
    result["client_cpu_ms_per_request"] = round(client_s * 1000 / answered, 3)
    if server_pid:
        server_s = process_tree_cpu_s(server_pid) - server_cpu
        result["server_cpu_ms_per_request"] = round(server_s * 1000 / answered, 3)
    return result


def cpu_bound_rps(load: dict[str, Any], cores: int = 2) -> float | None:
    """The rps ``cores`` idle cores would sustain at the measured CPU cost per request."""
    per_request_ms = load.get("server_cpu_ms_per_request", 0) + load["client_cpu_ms_per_request"]
    return round(cores * 1000 / per_request_ms, 1) if per_request_ms else None


def mean_batch_size(port: int) -> float | None:
    """Mean sessions per model call, from one worker's /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("streamrec_serving_score_batch_size_"):
            name, _, value = line.partition(" ")
            values[name] = float(value)
    count = values.get("streamrec_serving_score_batch_size_count", 0.0)
    total = values.get("streamrec_serving_score_batch_size_sum", 0.0)
    return round(total / count, 2) if count else None


def wait_ready(port: int, timeout_s: float, log_path: Path) -> None:
    """Poll ``/readyz`` until a model is loaded and Redis answers, for every worker.

    On timeout the end of the server's log goes to stderr (the workdir is removed after).
    """
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    in_a_row = 0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                in_a_row += 1
                if in_a_row >= 10:  # several answers: every worker has its model
                    return
        except (urllib.error.URLError, OSError):
            in_a_row = 0
            time.sleep(0.2)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    console.print(f"server log (end):\n{tail}", markup=False)
    raise TimeoutError(f"server on port {port} not ready after {timeout_s}s")
