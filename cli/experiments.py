"""``streamrec experiments report``: how each experiment arm does on live traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.output import print_report, settings_from_env

app = typer.Typer(no_args_is_help=True, help="The live experiment between model lineages.")


@app.command("report")
def experiments_report(
    events: Annotated[
        Path | None,
        typer.Option(help="Read an event JSON-lines file instead of the topics."),
    ] = None,
    horizon_s: Annotated[
        float | None,
        typer.Option(help="Outcome horizon after an impression (default: the flow's)."),
    ] = None,
    timeout_s: Annotated[float, typer.Option(help="Longest the topics are read.")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on one line.")] = False,
) -> None:
    """Per arm: impressions, CTR, served HR@K and conversion with 95% intervals, each arm
    against the control (difference, interval, p-value), and explored slots' CTR."""
    from loadtest.experiment_report import (
        read_file_events,
        read_topic_events,
        report_events,
        report_tables,
    )

    settings = settings_from_env()
    read = (
        read_file_events(events)
        if events is not None
        else read_topic_events(settings.kafka, timeout_s=timeout_s)
    )
    horizon = settings.flow.exposure_horizon_s if horizon_s is None else horizon_s
    report = report_events(read, int(horizon * 1000), settings.experiment.control)
    print_report(report, report_tables, as_json)
