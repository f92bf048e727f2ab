"""On-call and drift commands: ``drift``, ``finetune``, ``alerts tail``, ``model status|rollback``.

Registered by ``online_models/commands.py`` (``drift_commands.register(app, bench)``), and
``streamrec bench drift``. Heavy imports (torch, river) happen inside the commands.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
alerts_app = typer.Typer(no_args_is_help=True, help="Drift and fine-tune alerts.")
model_app = typer.Typer(no_args_is_help=True, help="The serving model version.")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the drift/on-call commands and ``bench drift`` to the CLI."""
    app.command("drift")(drift)
    app.command("finetune")(finetune)
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(model_app, name="model")
    bench.command("drift")(bench_drift)


def drift() -> None:
    """Run the drift monitor: detectors, alerts and drift-triggered fine-tunes."""
    from prometheus_client import start_http_server

    from online_models.drift_loop import run_drift_monitor
    from streamrec.cli import settings_from_env

    settings = settings_from_env()
    if settings.drift.metrics_port:
        start_http_server(settings.drift.metrics_port)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    run_drift_monitor(settings, stop)


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

    import redis

    from online_models.finetune_job import FinetuneRequest, run_finetune
    from online_models.finetune_status import acquire_finetune_lock
    from streamrec.cli import print_json_line, settings_from_env
    from streamrec.redis_keys import RedisKeys

    settings = settings_from_env()
    client = redis.Redis.from_url(settings.redis.redis_url.get_secret_value())
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


@alerts_app.command("tail")
def alerts_tail(
    count: Annotated[int, typer.Option("--count", "-n", help="Past alerts to show.")] = 20,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new ones.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per alert.")] = False,
) -> None:
    """Show the latest alerts (from the Redis alerts stream), newest last."""
    import redis

    from online_models.alert_tail import follow_alerts, latest_alerts, print_alert
    from streamrec.cli import settings_from_env
    from streamrec.redis_keys import RedisKeys

    settings = settings_from_env()
    client = redis.Redis.from_url(settings.redis.redis_url.get_secret_value())
    key = RedisKeys(settings.redis.key_prefix).alerts
    shown = latest_alerts(client, key, count)
    for _, alert in shown:
        print_alert(alert, as_json)
    if not follow:
        return
    cursor = shown[-1][0] if shown else "$"
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for alert in follow_alerts(client, key, cursor, stop):
        print_alert(alert, as_json)


@model_app.command("status")
def model_status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line.")] = False,
) -> None:
    """Current version, its age, freshness, last drift, last fine-tune and its verdict."""
    import redis

    from online_models.oncall_status import model_status_report
    from streamrec.cli import print_json_line, settings_from_env

    settings = settings_from_env()
    client = redis.Redis.from_url(settings.redis.redis_url.get_secret_value())
    report = model_status_report(settings, client)
    if as_json:
        print_json_line(report)
        return
    table = Table("field", "value", title="model status")
    for key, value in report.items():
        table.add_row(key, str(value))
    Console().print(table)


@model_app.command("rollback")
def model_rollback(
    version: Annotated[
        int | None,
        typer.Argument(help="Version to serve (default: the one before the last change)."),
    ] = None,
) -> None:
    """Make an earlier version current; serving and the learner pick it up from the registry."""
    import redis

    from online_models.oncall_status import rollback_model
    from streamrec.cli import print_json_line, settings_from_env

    settings = settings_from_env()
    client = redis.Redis.from_url(settings.redis.redis_url.get_secret_value())
    try:
        print_json_line(rollback_model(settings, client, version))
    except (KeyError, LookupError) as exc:
        console.print(f"rollback refused: {exc}")
        raise typer.Exit(2) from exc


def bench_drift(
    stationary_examples: Annotated[
        int, typer.Option(help="Examples in the stationary false-alarm run (>= 1M for the target).")
    ] = 1_000_000,
    events: Annotated[int, typer.Option(help="Events per abrupt/gradual scenario.")] = 40_000,
    seeds: Annotated[int, typer.Option(help="Seeds per scenario (medians reported).")] = 3,
    finetune: Annotated[
        bool, typer.Option(help="Run the recovery comparison with a drift fine-tune.")
    ] = True,
    pipeline: Annotated[
        bool, typer.Option(help="Also run the abrupt scenario through broker, learner, monitor.")
    ] = False,
) -> None:
    """Detection delay, false alarms per million, recovery with/without a fine-tune."""
    from online_models.drift_benchmark import run_drift_benchmark
    from streamrec.cli import print_json_line, settings_from_env

    print_json_line(
        run_drift_benchmark(
            settings_from_env(), stationary_examples, events, seeds, finetune, pipeline
        )
    )
