"""Command-line commands of this stage, registered on the ``streamrec`` app."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this stage's commands (and its ``bench`` sub-command) to the CLI."""

    @app.command()
    def serve(
        port: Annotated[int | None, typer.Option(help="Overrides STREAMREC_SERVING_PORT.")] = None,
        workers: Annotated[
            int | None, typer.Option(help="Overrides STREAMREC_SERVING_WORKERS.")
        ] = None,
    ) -> None:
        """Serve recommendations over HTTP (worker processes from config)."""
        import os

        from serving.server import serve as run_server
        from streamrec.cli import settings_from_env

        # Workers rebuild settings from the environment: pass the overrides that way.
        if port is not None:
            os.environ["STREAMREC_SERVING_PORT"] = str(port)
        if workers is not None:
            os.environ["STREAMREC_SERVING_WORKERS"] = str(workers)
        run_server(settings_from_env().serving)

    @bench.command("serving")
    def bench_serving(
        duration_s: Annotated[float, typer.Option(help="Measured seconds per run.")] = 20.0,
        concurrency: Annotated[int, typer.Option(help="Open connections of the client.")] = 8,
        workers: Annotated[
            int | None, typer.Option(help="Server worker processes (default: from config).")
        ] = None,
        swaps: Annotated[int, typer.Option(help="Versions published during the run.")] = 12,
        large_items: Annotated[
            int, typer.Option(help="Synthetic catalog size (0 skips that run).")
        ] = 1_000_000,
        large_concurrency: Annotated[
            int, typer.Option(help="Connections for the large-catalog run.")
        ] = 2,
    ) -> None:
        """Latency and throughput of /recommend with hot swaps; prints one JSON line."""
        from serving.serving_benchmark import BenchConfig, run_serving_benchmark
        from streamrec.cli import print_json_line, settings_from_env

        settings = settings_from_env()
        config = BenchConfig(
            duration_s=duration_s,
            concurrency=concurrency,
            workers=workers or settings.serving.workers,
            swaps=swaps,
            large_items=large_items,
            large_concurrency=large_concurrency,
        )
        print_json_line(run_serving_benchmark(settings, config))
