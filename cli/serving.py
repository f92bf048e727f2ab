"""``streamrec serve``: the HTTP service."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.output import settings_from_env

app = typer.Typer()


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="Overrides STREAMREC_SERVING_PORT.")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Overrides STREAMREC_SERVING_WORKERS.")
    ] = None,
) -> None:
    """Serve recommendations over HTTP (worker processes from config)."""
    from serving.server import serve as run_server

    serving = settings_from_env().serving
    overrides = {"port": port, "workers": workers}
    run_server(serving.model_copy(update={k: v for k, v in overrides.items() if v is not None}))
