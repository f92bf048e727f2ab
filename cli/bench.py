"""``streamrec bench events|flow|learner|serving|drift``: benchmarks, each one JSON line.

The benchmarks themselves live in ``loadtest/bench/``; where one reports a ratio, it runs
its baseline in the same process run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.output import print_json_line, settings_from_env
from streamrec.recorded_events import require_recorded_source
from streamrec.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Benchmarks: each prints one JSON line.")


def sample_settings() -> Settings:
    """Settings for a benchmark that reads the recorded sample, which must be there."""
    settings = settings_from_env()
    require_recorded_source(settings.data_dir)
    return settings


@app.command("events")
def bench_events(
    rounds: Annotated[int, typer.Option(help="Timed passes over the sample.")] = 5,
) -> None:
    """Parse+validate cost per event on the sample's events (median of rounds)."""
    from loadtest.bench.events import run_event_benchmark

    print_json_line(run_event_benchmark(sample_settings(), rounds))


@app.command("flow")
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
    workers: Annotated[
        int, typer.Option(min=1, help="Flow worker processes (a Bytewax cluster) in phase 1.")
    ] = 1,
) -> None:
    """End-to-end flow throughput vs. its source ceiling, then freshness at half rate."""
    from loadtest.bench.flow import run_flow_benchmark

    print_json_line(
        run_flow_benchmark(sample_settings(), events, freshness_s, rounds, freshness_rate, workers)
    )


@app.command("learner")
def bench_learner(
    examples: Annotated[int, typer.Option(help="Examples through the head step.")] = 60_000,
    seconds: Annotated[float, typer.Option(help="Event-to-weights run length.")] = 20.0,
    rate: Annotated[float, typer.Option(help="Examples/s produced in that run.")] = 2000.0,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda (default: STREAMREC_LEARNER_DEVICE).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Model sizes: default | large | xl (default: settings).")
    ] = None,
    step_only: Annotated[
        bool, typer.Option(help="Time the step alone at B=256, 1024, 4096: no broker, no Redis.")
    ] = False,
    items: Annotated[
        int, typer.Option(help="Synthetic items in the model before the sample (--step-only).")
    ] = 0,
) -> None:
    """Head-update throughput, publish cost and event-to-weights latency (one JSON line)."""
    from streamrec.settings import with_preset

    settings = sample_settings()
    if preset is not None:
        settings = settings.model_copy(update={"model": with_preset(settings.model, preset)})
    if device is not None:
        learner = settings.learner.model_copy(update={"device": device})
        settings = settings.model_copy(update={"learner": learner})
    if step_only:
        from loadtest.bench.learner_step import run_step_benchmark, sample_examples
        from online_models.model.device import pick_device

        report = run_step_benchmark(
            settings, sample_examples(settings, examples), pick_device(settings.learner.device),
            (256, 1024, 4096), items,
        )  # fmt: skip
        model = settings.model
        report["config"] = {
            "preset": model.preset, "hidden_size": model.hidden_size,
            "num_layers": model.num_layers, "num_heads": model.num_heads,
        }  # fmt: skip
        print_json_line(report)
        return
    from loadtest.bench.learner import run_learner_benchmark

    print_json_line(run_learner_benchmark(settings, examples, seconds, rate))


@app.command("serving")
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
    large_swaps: Annotated[
        int, typer.Option(help="Deltas published during the large-catalog run.")
    ] = 10,
) -> None:
    """Latency and throughput of /recommend with hot swaps; prints one JSON line."""
    from loadtest.bench.serving import BenchConfig, run_serving_benchmark

    settings = sample_settings()
    config = BenchConfig(
        duration_s=duration_s,
        concurrency=concurrency,
        workers=workers or settings.serving.workers,
        swaps=swaps,
        large_items=large_items,
        large_concurrency=large_concurrency,
        large_swaps=large_swaps,
    )
    print_json_line(run_serving_benchmark(settings, config))


@app.command("drift")
def bench_drift(
    stationary_examples: Annotated[
        int, typer.Option(help="Examples in the stationary false-alarm run (>= 1M for the target).")
    ] = 1_000_000,
    events: Annotated[int, typer.Option(help="Events per abrupt/gradual scenario.")] = 40_000,
    seeds: Annotated[int, typer.Option(help="Seeds per scenario (medians reported).")] = 3,
    first_seed: Annotated[
        int, typer.Option(help="The scenarios' first seed (another range: a dev set).")
    ] = 0,
    finetune: Annotated[
        bool, typer.Option(help="Run the recovery comparison with a drift fine-tune.")
    ] = True,
    pipeline: Annotated[
        bool, typer.Option(help="Also run the abrupt scenario through broker, learner, monitor.")
    ] = False,
    replay: Annotated[
        Path | None,
        typer.Option(
            help="Instead: a recorded source (as `replay` reads) through learner and monitor; "
            "alerts per simulated day by severity."
        ),
    ] = None,
    warmup_until: Annotated[
        str | None,
        typer.Option(help="With --replay: ISO time; train before it (default: 40% of examples)."),
    ] = None,
) -> None:
    """Detection delay, false alarms per million, recovery with/without a fine-tune."""
    if replay is not None:
        from loadtest.bench.drift_replay import run_drift_replay
        from streamrec.events import iso_to_ms

        until = iso_to_ms(warmup_until) if warmup_until else None
        print_json_line(run_drift_replay(settings_from_env(), replay, until))
        return
    from loadtest.bench.drift import run_drift_benchmark

    print_json_line(
        run_drift_benchmark(
            settings_from_env(),
            stationary_examples,
            events,
            range(first_seed, first_seed + seeds),
            finetune,
            pipeline,
        )  # fmt: skip
    )
