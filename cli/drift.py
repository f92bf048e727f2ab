"""``streamrec drift`` (the drift monitor) and ``streamrec finetune`` (a gated full fine-tune)."""

from __future__ import annotations

import signal
import threading
import time
from typing import Annotated

import typer

from cli.output import console, print_json_line, settings_from_env

app = typer.Typer()


@app.command()
def drift() -> None:
    """Run the drift monitor: detectors, alerts and drift-triggered fine-tunes."""
    from prometheus_client import REGISTRY, start_http_server

    from online_models.drift.loop import run_drift_monitor

    settings = settings_from_env()
    if settings.drift.metrics_port:
        start_http_server(settings.drift.metrics_port)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    run_drift_monitor(settings, stop, REGISTRY)


@app.command()
def finetune(
    replay: Annotated[
        int | None, typer.Option(help="Examples to replay (default: config).")
    ] = None,
    since_minutes: Annotated[
        float | None, typer.Option(help="Replay examples from this many minutes ago instead.")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Ignore a running fine-tune's lock/cooldown.")
    ] = False,
) -> None:
    """Run one full fine-tune now (same path as a drift-triggered one); prints its report."""
    from dataclasses import asdict

    from online_models.finetune.job import FinetuneRequest, run_finetune
    from online_models.finetune.status import acquire_finetune_lock
    from streamrec.redis_connection import connect_redis
    from streamrec.redis_keys import RedisKeys

    settings = settings_from_env()
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    keys = RedisKeys(settings.redis.key_prefix)
    if not acquire_finetune_lock(client, keys, settings.drift.finetune_timeout_s) and not force:
        console.print("a fine-tune is running or cooling down (use --force to run anyway)")
        raise typer.Exit(2)
    since_ms = None if since_minutes is None else int((time.time() - since_minutes * 60) * 1000)
    request = FinetuneRequest("manual", replay or settings.drift.replay_examples, since_ms)
    report = run_finetune(settings, client, request)
    print_json_line(asdict(report))
    if report.verdict == "failed":
        raise typer.Exit(1)
