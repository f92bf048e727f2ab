"""``streamrec model status|rollback|canary``: what on-call engineers ask of the serving
model."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli.output import console, print_json_line, refuse, settings_from_env

app = typer.Typer(no_args_is_help=True, help="The serving model version.")


@app.command("status")
def model_status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line.")] = False,
) -> None:
    """Current version, its age, freshness, last drift, last fine-tune and its verdict."""
    from online_models.oncall import model_status_report
    from streamrec.redis_connection import connect_redis

    settings = settings_from_env()
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    report = model_status_report(settings, client)
    if as_json:
        print_json_line(report)
        return
    print_fields("model status", report)


@app.command("rollback")
def model_rollback(
    version: Annotated[
        int | None,
        typer.Argument(help="Version to serve (default: the one before the last change)."),
    ] = None,
) -> None:
    """Make an earlier version current; serving and the learner pick it up from the registry."""
    from online_models.finetune.rollback import rollback_model
    from streamrec.redis_connection import connect_redis

    settings = settings_from_env()
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    try:
        print_json_line(rollback_model(settings, client, version))
    except (KeyError, LookupError) as exc:
        console.print(f"rollback refused: {exc}")
        raise typer.Exit(2) from exc


@app.command("canary")
def model_canary(
    promote: Annotated[
        bool, typer.Option("--promote", help="Make the canary current now (as the watch would).")
    ] = False,
    drop: Annotated[
        bool, typer.Option("--drop", help="Stop serving the canary now (a roll-back by hand).")
    ] = False,
    note: Annotated[
        str, typer.Option("--reason", help="Why, recorded after 'by hand' and in the alert.")
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line.")] = False,
) -> None:
    """The canary being rolled out (or the last one): since when, arm share, counts so far;
    --promote / --drop end it by hand like the drift monitor's canary watch would."""
    from online_models import oncall
    from streamrec.redis_connection import connect_redis

    if promote and drop:
        refuse("--promote and --drop exclude each other")
    settings = settings_from_env()
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    if promote or drop:
        end = oncall.promote_canary_by_hand if promote else oncall.drop_canary_by_hand
        try:
            print_json_line(end(settings, client, note))
        except (LookupError, RuntimeError) as exc:
            refuse(f"canary {'promotion' if promote else 'drop'} refused: {exc}")
        return
    report = oncall.canary_report(settings, client)
    if as_json:
        print_json_line(report)
        return
    title = "canary (running)" if report["running"] else "canary (none running; the last one)"
    print_fields(title, report)


def print_fields(title: str, report: dict[str, Any]) -> None:
    """A report as a two-column table (field, value) on stdout."""
    table = Table("field", "value", title=title)
    for key, value in report.items():
        table.add_row(key, str(value))
    Console().print(table)
