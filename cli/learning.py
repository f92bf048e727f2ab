"""``streamrec train``, ``learn`` and ``evaluate``: the model's training and online learning.

``train`` fits and publishes a version, ``learn`` runs the online learner and ``evaluate``
compares it with the baselines prequentially. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.output import SOURCE_HELP, print_json_line, refuse, settings_from_env

app = typer.Typer()


@app.command("train")
def train_command(
    source: Annotated[
        list[Path] | None,
        typer.Option("--source", help=SOURCE_HELP),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only events before this ISO time (UTC).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Override STREAMREC_TRAIN_EPOCHS.")] = None,
    publish: Annotated[bool, typer.Option(help="Publish the result as a version.")] = True,
    init_current: Annotated[
        bool, typer.Option(help="Start from the registry's current version.")
    ] = False,
) -> None:
    """Train backbone and head on recorded events and publish the result as a version."""
    import redis

    from online_models.offline.recorded_examples import load_examples
    from online_models.offline.training import train
    from online_models.registry.weight_registry import WeightRegistry
    from streamrec.events import iso_to_ms
    from streamrec.recorded_events import require_recorded_source

    settings = settings_from_env()
    sources = [require_recorded_source(path) for path in source or [settings.data_dir]]
    train_settings = settings.train
    if epochs is not None:
        train_settings = train_settings.model_copy(update={"epochs": epochs})
    cutoff = iso_to_ms(until) if until else None
    examples = load_examples(settings, sources, before_ms=cutoff)
    client = redis.Redis.from_url(settings.redis.redis_url.get_secret_value())
    registry = WeightRegistry(settings, client)
    init = registry.load() if init_current else None
    result = train(settings.model, train_settings, examples, init, progress=sys.stderr.isatty())
    report: dict[str, object] = {"metrics": result.metrics, "history": result.history}
    if publish:
        publication = registry.publish_snapshot(
            result.weights, source="train", examples_seen=len(examples), metrics=result.metrics
        )
        report["version"] = publication.version
    print_json_line(report)


@app.command("learn")
def learn_command(
    idle_exit_s: Annotated[
        float | None, typer.Option(help="Exit after this long without examples.")
    ] = None,
) -> None:
    """Run the online learner: micro-batches from training-examples to published versions."""
    import signal
    import threading

    import redis
    from prometheus_client import REGISTRY, start_http_server

    from online_models.learner.loop import Learner
    from online_models.learner.version_follower import LearnerStartError

    settings = settings_from_env()
    client = redis.Redis.from_url(settings.redis.redis_url.get_secret_value())
    if settings.learner.metrics_port:
        start_http_server(settings.learner.metrics_port)
    learner = Learner(settings, client, REGISTRY)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        learner.start()
        learner.run(stop, idle_exit_s)
    except LearnerStartError as exc:
        refuse(str(exc))
    finally:
        learner.close()


@app.command("evaluate")
def evaluate_command(
    warmup_until: Annotated[str, typer.Option(help="ISO time: train before, stream after.")],
    source: Annotated[list[Path] | None, typer.Option("--source", help=SOURCE_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line on stdout.")] = False,
    plot: Annotated[Path, typer.Option(help="PNG of windowed HR@20.")] = Path(
        "reports/evaluation.png"
    ),
    window: Annotated[int, typer.Option(help="Examples per plot window.")] = 2000,
    stream_until: Annotated[
        str | None, typer.Option(help="ISO time: stream only before it (a dev stream).")
    ] = None,
    exposure_weights: Annotated[
        list[str] | None,
        typer.Option(
            "--exposure-weights",
            help="NEG,POS: add the online model learning from a simulated shop's exposures "
            "with these weights (repeatable).",
        ),
    ] = None,
    baselines: Annotated[
        bool, typer.Option(help="Also popularity, session-kNN and static (off: tuning).")
    ] = True,
) -> None:
    """Prequential comparison: popularity, session-kNN, static and online models."""
    from online_models.offline.evaluation import run_evaluation
    from streamrec.events import iso_to_ms
    from streamrec.recorded_events import require_recorded_source

    settings = settings_from_env()
    sources = [require_recorded_source(path) for path in source or [settings.data_dir]]
    pairs = [tuple(float(w) for w in pair.split(",")) for pair in exposure_weights or []]
    if any(len(pair) != 2 for pair in pairs):
        raise typer.BadParameter("--exposure-weights takes NEG,POS")
    report = run_evaluation(
        settings,
        sources,
        iso_to_ms(warmup_until),
        plot,
        window,
        progress=sys.stderr.isatty(),
        stream_until_ms=iso_to_ms(stream_until) if stream_until else None,
        exposure_weights=[(pair[0], pair[1]) for pair in pairs],
        baselines=baselines,
    )
    if as_json:
        print_json_line(report)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "HR@20", "MRR@20")
    for name, values in report["models"].items():
        table.add_row(name, f"{values['hr@20']:.4f}", f"{values['mrr@20']:.4f}")
    Console().print(table)
    Console().print(f"{report['examples']} examples; plot: {plot}")
