"""The ``streamrec`` command: every command group registered in one place."""

from __future__ import annotations

import sys

import typer

from cli import (
    alerts,
    bench,
    drift,
    experiments,
    explain,
    flow,
    learning,
    loadtest,
    loop,
    model,
    services,
    serving,
    traffic,
)
from streamrec.delimited_log import MappingError
from streamrec.recorded_events import RecordedSourceMissing

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="The streamrec command line: one entry point for every stage of the loop.",
)
# Top-level commands, by the stage they run.
for commands in (loop, traffic, flow, learning, drift, serving, explain, loadtest):
    app.add_typer(commands.app)
# Sub-command groups: ``streamrec services up``, ``streamrec bench flow``, ...
app.add_typer(services.app, name="services")
app.add_typer(alerts.app, name="alerts")
app.add_typer(model.app, name="model")
app.add_typer(bench.app, name="bench")
app.add_typer(experiments.app, name="experiments")


def main() -> None:
    try:
        app(prog_name="streamrec")
    except (RecordedSourceMissing, MappingError) as error:
        # A wrong data path or mapping is the user's to fix: one sentence, no traceback.
        sys.stderr.write(f"streamrec: error: {error}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
