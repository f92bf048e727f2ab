"""Command-line commands of the feature flow: ``streamrec flow`` and ``streamrec bench flow``."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this stage's commands (and its ``bench`` sub-command) to the CLI."""

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
            typer.Option(
                "--addresses", "-a", help='Every process as "host:port;host:port" (with -i).'
            ),
        ] = None,
    ) -> None:
        """Run the feature dataflow (clicks + purchases -> Redis features, examples, DLQ)."""
        from flows.flow_runner import run_flow
        from streamrec.cli import settings_from_env

        if (process_id is None) != (addresses is None):
            raise typer.BadParameter("--process-id and --addresses go together")
        run_flow(
            settings_from_env(),
            workers=workers,
            process_id=process_id,
            addresses=addresses.split(";") if addresses else None,
        )

    @bench.command("flow")
    def bench_flow(
        events: Annotated[int, typer.Option(help="Events to replay through the flow.")] = 500_000,
        freshness_s: Annotated[
            float, typer.Option(help="Length of the half-throughput freshness phase.")
        ] = 8.0,
        rounds: Annotated[int, typer.Option(help="Timed runs of ceiling and flow (median).")] = 3,
        freshness_rate: Annotated[
            float | None,
            typer.Option(help="Events/s of the freshness phase (default: half the throughput)."),
        ] = None,
    ) -> None:
        """End-to-end flow throughput vs. its source ceiling, then freshness at half rate."""
        from flows.flow_benchmark import run_flow_benchmark
        from streamrec.cli import print_json_line, settings_from_env

        print_json_line(
            run_flow_benchmark(settings_from_env(), events, freshness_s, rounds, freshness_rate)
        )
