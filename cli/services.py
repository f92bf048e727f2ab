"""``streamrec services up|down|status``: the embedded broker and a private Redis."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.output import print_json_line, refuse, settings_from_env

app = typer.Typer(no_args_is_help=True, help="Embedded broker and Redis.")


@app.command("up")
def services_up() -> None:
    """Start the embedded broker (and Redis if needed), create topics; idempotent."""
    from streamrec.local_services import ServiceError
    from streamrec.local_services import services_up as up

    try:
        print_json_line(up(settings_from_env()).as_dict())
    except (ServiceError, TimeoutError) as exc:
        refuse(str(exc))


@app.command("down")
def services_down() -> None:
    """Stop only what ``services up`` started."""
    from streamrec.local_services import services_down as down

    print_json_line({"stopped": down(settings_from_env())})


@app.command("status")
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
