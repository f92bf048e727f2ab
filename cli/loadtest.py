"""``streamrec demo`` (the main job) and ``streamrec loadtest`` (a deploy gate)."""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer

from cli.output import SOURCE_HELP, print_json_line, settings_from_env

DEFAULT_SLO_FILE = Path(str(files("loadtest") / "default_slo.yaml"))


app = typer.Typer()


@app.command()
def demo(
    speed: Annotated[float, typer.Option(help="Replay speed (x real time).")] = 30_000.0,
    shop_rate: Annotated[float, typer.Option(help="Shop requests per second.")] = 40.0,
    warmup_until: Annotated[str, typer.Option(help="Train on events before this.")] = (
        "2014-06-15T00:00:00Z"
    ),
    epochs: Annotated[int, typer.Option(help="Epochs of the first training.")] = 3,
) -> None:
    """The main job: train, run the loop on the sample, simulate a shop, write a report."""
    from loadtest.demo_run import DemoPlan, run_demo
    from streamrec.recorded_events import require_recorded_source

    require_recorded_source(settings_from_env().data_dir)
    plan = DemoPlan(
        warmup_until=warmup_until, speed=speed, shop_rate=shop_rate, train_epochs=epochs
    )
    raise typer.Exit(run_demo(plan))


@app.command()
def loadtest(
    source: Annotated[Path | None, typer.Argument(help=SOURCE_HELP)] = None,
    speed: Annotated[float | None, typer.Option(help="Replay at N x real time.")] = None,
    rate: Annotated[float | None, typer.Option(help="Replay at a fixed events/s.")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    since: Annotated[str | None, typer.Option(help="Skip events before this ISO time.")] = None,
    shop_rate: Annotated[float, typer.Option(help="Serving requests per second.")] = 40.0,
    slo: Annotated[Path, typer.Option(help="SLO file (YAML).")] = DEFAULT_SLO_FILE,
    report_dir: Annotated[Path, typer.Option(help="Where reports go.")] = Path("reports"),
    start_loop: Annotated[
        bool,
        typer.Option(help="Start services and the loop here (training a first model if none)."),
    ] = False,
    train_until: Annotated[
        str, typer.Option(help="With --start-loop and no model yet: train on events before this.")
    ] = ("2014-06-15T00:00:00Z"),
) -> None:
    """Replay traffic through the loop while driving serving; exit 1 when an SLO fails."""
    from loadtest.load_gate import run_load_gate
    from streamrec.recorded_events import require_recorded_source

    settings = settings_from_env()
    report = run_load_gate(
        settings,
        require_recorded_source(source or settings.data_dir),
        speed=speed,
        rate=rate,
        limit=limit,
        since=since,
        shop_rate=shop_rate,
        slo_file=slo,
        report_dir=report_dir,
        start_loop=start_loop,
        train_until=train_until,
        progress=sys.stderr.isatty(),
    )
    print_json_line(report)
    if not report["passed"]:
        raise typer.Exit(1)


@app.command()
def chaos(
    events: Annotated[int, typer.Option(help="Events to replay.")] = 30_000,
    rate: Annotated[float, typer.Option(help="Replay rate, events/s.")] = 400.0,
    since: Annotated[str, typer.Option(help="Train before this ISO time, replay from it.")] = (
        "2014-06-15T00:00:00Z"
    ),
) -> None:
    """The loop on its own broker and Redis through crashes and restarts; exit 1 if it lost."""
    from loadtest.chaos_run import ChaosPlan, run_chaos
    from streamrec.recorded_events import require_recorded_source

    require_recorded_source(settings_from_env().data_dir)
    report = run_chaos(ChaosPlan(since=since, events=events, rate=rate))
    print_json_line(report)
    if not report["passed"]:
        raise typer.Exit(1)
