"""``streamrec flow``: the feature dataflow in this process (or one process of a cluster)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.output import settings_from_env

app = typer.Typer()


@app.command("flow")
def flow(
    workers: Annotated[
        int, typer.Option("--workers", "-w", help="Worker threads in this process.")
    ] = 1,
    process_id: Annotated[
        int | None,
        typer.Option("--process-id", "-i", help="This process's index in a cluster."),
    ] = None,
    addresses: Annotated[
        str | None,
        typer.Option("--addresses", "-a", help='Every process as "host:port;host:port" (with -i).'),
    ] = None,
) -> None:
    """Run the feature dataflow (clicks + purchases -> Redis features, examples, DLQ)."""
    from flows.runner import run_flow

    if (process_id is None) != (addresses is None):
        raise typer.BadParameter("--process-id and --addresses go together")
    run_flow(
        settings_from_env(),
        workers=workers,
        process_id=process_id,
        addresses=addresses.split(";") if addresses else None,
    )
