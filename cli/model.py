"""``streamrec model status|rollback``: what on-call engineers ask of the serving model."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.output import console, print_json_line, settings_from_env

app = typer.Typer(no_args_is_help=True, help="The serving model version.")


@app.command("status")
def model_status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line.")] = False,
) -> None:
    """Current version, its age, freshness, last drift, last fine-tune and its verdict."""
    import redis

    from online_models.oncall import model_status_report

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


@app.command("rollback")
def model_rollback(
    version: Annotated[
        int | None,
        typer.Argument(help="Version to serve (default: the one before the last change)."),
    ] = None,
) -> None:
    """Make an earlier version current; serving and the learner pick it up from the registry."""
    import redis

    from online_models.finetune.rollback import rollback_model

    settings = settings_from_env()
    client = redis.Redis.from_url(settings.redis.redis_url.get_secret_value())
    try:
        print_json_line(rollback_model(settings, client, version))
    except (KeyError, LookupError) as exc:
        console.print(f"rollback refused: {exc}")
        raise typer.Exit(2) from exc
