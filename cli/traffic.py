"""``streamrec replay``, ``sample`` and ``generate``: recorded, sampled and synthetic traffic."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.output import SOURCE_HELP, print_json_line, settings_from_env

app = typer.Typer()


@app.command()
def replay(
    source: Annotated[
        Path | None,
        typer.Argument(help=SOURCE_HELP),
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Events per second.")] = None,
    speed: Annotated[float | None, typer.Option(help="Multiple of real (event) time.")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    salt: Annotated[str, typer.Option(help="Salt for fresh event ids (YooChoose).")] = "",
) -> None:
    """Produce recorded traffic to Kafka, keyed by session, with deterministic event ids."""
    from loadtest.traffic_replay import replay as run_replay
    from streamrec.events import EventLimits
    from streamrec.recorded_events import read_recorded, require_recorded_source
    from streamrec.topics import Topics

    settings = settings_from_env()
    path = require_recorded_source(source or settings.data_dir)
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
    if report.error is not None:
        # One line an operator can act on; the JSON line above has the counts.
        typer.echo(
            f"replay stopped: {report.error} ({report.produced:,} of {report.sent:,} events "
            "acknowledged; rerunning is safe, event ids are deterministic)",
            err=True,
        )
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


@app.command()
def sample(
    out: Annotated[Path, typer.Option(help="Output event JSON-lines file.")],
    source: Annotated[Path | None, typer.Argument(help=SOURCE_HELP)] = None,
    share: Annotated[float, typer.Option(help="Share of the sessions kept, in (0, 1].")] = 0.1,
    seed: Annotated[int, typer.Option(help="Which sessions: a hash of the seed and the id.")] = 0,
) -> None:
    """Write a seeded share of a source's sessions (whole sessions): a sparse variant."""
    from loadtest.session_sample import write_sample
    from streamrec.events import EventLimits
    from streamrec.recorded_events import only_events, read_recorded, require_recorded_source

    settings = settings_from_env()
    path = require_recorded_source(source or settings.data_dir)
    events = only_events(read_recorded(path, EventLimits.from_settings(settings.events)))
    print_json_line(
        {"source": str(path), "share": share, "seed": seed, "out": str(out)}
        | write_sample(events, share, seed, out)
    )
