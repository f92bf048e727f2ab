"""The ``streamrec`` command line: one entry point for every stage of the loop.

Each stage's package adds its own commands through a ``register(app, bench)`` function
in its ``commands`` module; heavy imports (torch, bytewax) happen inside the commands,
so ``streamrec config`` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from streamrec.settings import Settings, load_settings, masked_settings
from streamrec.structured_log import configure_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.split("\n")[0])
services_app = typer.Typer(no_args_is_help=True, help="Embedded broker and Redis.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: each prints one JSON line.")
app.add_typer(services_app, name="services")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)


def settings_from_env() -> Settings:
    """Settings for a command, with logging configured from them."""
    settings = load_settings()
    configure_logging(settings.log_level)
    return settings


def print_json_line(data: object) -> None:
    """Benchmarks and ``--json`` outputs: exactly one JSON line on stdout."""
    sys.stdout.write(orjson.dumps(data).decode() + "\n")
    sys.stdout.flush()


@app.command()
def config() -> None:
    """Print the effective configuration (secrets masked)."""
    print_json_line(masked_settings(load_settings()))


@services_app.command("up")
def services_up() -> None:
    """Start the embedded broker (and Redis if needed), create topics; idempotent."""
    from streamrec.local_services import services_up as up

    print_json_line(up(settings_from_env()).as_dict())


@services_app.command("down")
def services_down() -> None:
    """Stop only what ``services up`` started."""
    from streamrec.local_services import services_down as down

    print_json_line({"stopped": down(settings_from_env())})


@services_app.command("status")
def services_status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line.")] = False,
) -> None:
    """Whether the broker and Redis answer."""
    from streamrec.local_services import services_status as status

    report = status(settings_from_env()).as_dict()
    if as_json:
        print_json_line(report)
        return
    table = Table("service", "address", "answers", "started by streamrec")
    table.add_row(
        "kafka",
        str(report["bootstrap_servers"]),
        str(report["broker_ok"]),
        str(report["broker_managed"]),
    )
    table.add_row(
        "redis", str(report["redis_url"]), str(report["redis_ok"]), str(report["redis_managed"])
    )
    Console().print(table)
    if not (report["broker_ok"] and report["redis_ok"]):
        raise typer.Exit(1)


@app.command()
def up(
    services: Annotated[
        bool, typer.Option(help="Start the embedded broker/Redis if needed.")
    ] = True,
    stages: Annotated[str, typer.Option(help="Comma-separated stages to run.")] = (
        "flow,learner,drift,serving"
    ),
) -> None:
    """Run the loop (flow, learner, drift, serving), restarting what crashes; Ctrl-C stops."""
    from streamrec.local_services import services_up as start_services
    from streamrec.loop_processes import loop_specs
    from streamrec.process_supervisor import Supervisor

    settings = settings_from_env()
    if services:
        start_services(settings)
    chosen = tuple(stage.strip() for stage in stages.split(",") if stage.strip())
    supervisor = Supervisor(loop_specs(settings, chosen), settings.state_dir / "logs")
    console.print(f"streamrec up: {', '.join(chosen)} (logs in {settings.state_dir / 'logs'})")
    supervisor.run_until_stopped()


@app.command()
def replay(
    source: Annotated[
        Path | None,
        typer.Argument(help="YooChoose directory or event JSON-lines file (default: the sample)."),
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Events per second.")] = None,
    speed: Annotated[float | None, typer.Option(help="Multiple of real (event) time.")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    salt: Annotated[str, typer.Option(help="Salt for fresh event ids (YooChoose).")] = "",
) -> None:
    """Produce recorded traffic to Kafka, keyed by session, with deterministic event ids."""
    from loadtest.traffic_replay import replay as run_replay
    from streamrec.events import EventLimits
    from streamrec.recorded_events import read_recorded
    from streamrec.topics import Topics

    settings = settings_from_env()
    path = source or settings.data_dir
    records = read_recorded(path, EventLimits.from_settings(settings.events), salt)
    report = run_replay(
        records,
        settings.kafka,
        Topics.from_settings(settings.kafka),
        rate=rate,
        speed=speed,
        limit=limit,
        progress=sys.stderr.isatty(),
    )
    print_json_line(report.as_dict())
    if report.delivery_errors:
        raise typer.Exit(1)


@app.command()
def generate(
    scenario: Annotated[str, typer.Argument(help="stationary | abrupt | gradual | new-items")],
    out: Annotated[Path, typer.Option(help="Output JSON-lines file.")],
    events: Annotated[int, typer.Option(help="Valid events to write.")] = 10_000,
    seed: Annotated[int, typer.Option()] = 0,
    items: Annotated[int, typer.Option(help="Catalog size.")] = 1000,
    bad_fraction: Annotated[float, typer.Option(help="Share of bad lines.")] = 0.0,
    drift_at: Annotated[float, typer.Option(help="Where drift starts (fraction).")] = 0.5,
) -> None:
    """Write a seeded synthetic stream and its ground truth (``OUT.truth.json``)."""
    from dataclasses import asdict

    from loadtest.synthetic_traffic import GeneratorConfig, Scenario, write_scenario

    config = GeneratorConfig(
        scenario=Scenario(scenario),
        events=events,
        seed=seed,
        items=items,
        bad_fraction=bad_fraction,
        drift_at=drift_at,
    )
    print_json_line(asdict(write_scenario(config, out)))


@bench_app.command("events")
def bench_events(
    rounds: Annotated[int, typer.Option(help="Timed passes over the sample.")] = 5,
) -> None:
    """Parse+validate cost per event on the sample's events (median of rounds)."""
    from streamrec.event_benchmark import run_event_benchmark

    print_json_line(run_event_benchmark(load_settings(), rounds))


def _register_areas() -> None:
    """Each stage adds its commands here."""
    import flows.commands
    import loadtest.commands
    import online_models.commands
    import online_models.drift_commands
    import serving.commands

    areas = (
        flows.commands,
        online_models.commands,
        online_models.drift_commands,
        serving.commands,
        loadtest.commands,
    )
    for area in areas:
        area.register(app, bench_app)


def main() -> None:
    _register_areas()
    app()


if __name__ == "__main__":
    main()
