"""``streamrec config`` and ``streamrec up``: the configuration and the whole loop."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.output import console, print_json_line, settings_from_env

app = typer.Typer()


@app.command()
def config() -> None:
    """Print the effective configuration (secrets masked)."""
    from streamrec.settings import load_settings, masked_settings

    print_json_line(masked_settings(load_settings()))


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
