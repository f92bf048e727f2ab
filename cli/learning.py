"""``streamrec train``, ``learn`` and ``evaluate``: the model's training and online learning.

``train`` fits and publishes a version, ``learn`` runs the online learner and ``evaluate``
compares it with the baselines prequentially. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.output import SOURCE_HELP, console, print_json_line, refuse, settings_from_env

app = typer.Typer()

TUNE_HELP = (
    "Fit the model size and the learner's row step and negatives on the warm-up's own "
    "validation split (default: STREAMREC_TUNE_ENABLED, on)."
)


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
    tune: Annotated[
        bool | None, typer.Option("--tune/--no-tune", help=TUNE_HELP + " Not with --init-current.")
    ] = None,
) -> None:
    """Train backbone and head on recorded events and publish the result as a version.

    With tuning, the fitted learner knobs are published in the version's metadata
    (``learner.row_lr``, ``learner.sampled_negatives``), and the learner uses them.
    """
    from online_models.offline.recorded_examples import load_examples
    from online_models.offline.training import train
    from online_models.registry.weight_registry import WeightRegistry
    from streamrec.events import iso_to_ms
    from streamrec.recorded_events import require_recorded_source
    from streamrec.redis_connection import connect_redis

    settings = settings_from_env()
    sources = [require_recorded_source(path) for path in source or [settings.data_dir]]
    train_settings = settings.train
    if epochs is not None:
        train_settings = train_settings.model_copy(update={"epochs": epochs})
    cutoff = iso_to_ms(until) if until else None
    examples = load_examples(settings, sources, before_ms=cutoff)
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    registry = WeightRegistry(settings, client)
    init = registry.load() if init_current else None
    report: dict[str, object] = {}
    fitted: dict[str, float] = {}
    if init is None and (settings.tune.enabled if tune is None else tune):
        from online_models.offline.tuning import fit_to_shop

        tuned = settings.model_copy(update={"train": train_settings})
        tuning = fit_to_shop(tuned, examples, progress=sys.stderr.isatty())
        result, fitted, report["tuning"] = tuning.trained, tuning.fitted(), tuning.report()
        print_tuning(report["tuning"])
    else:
        result = train(settings.model, train_settings, examples, init, progress=sys.stderr.isatty())
    report.update({"metrics": result.metrics, "history": result.history})
    if publish:
        publication = registry.publish_snapshot(
            result.weights, source="train", examples_seen=len(examples),
            metrics={**result.metrics, **fitted},
        )  # fmt: skip
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

    from prometheus_client import REGISTRY, start_http_server

    from online_models.learner.loop import Learner
    from online_models.learner.version_follower import LearnerStartError
    from streamrec.redis_connection import connect_redis

    settings = settings_from_env()
    client = connect_redis(settings.redis.redis_url.get_secret_value())
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
    tune: Annotated[bool | None, typer.Option("--tune/--no-tune", help=TUNE_HELP)] = None,
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
        tune=settings.tune.enabled if tune is None else tune,
    )
    if "tuning" in report:
        print_tuning(report["tuning"])
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


def print_tuning(tuning: dict[str, Any]) -> None:
    """The tuning's trials as a rich table on stderr (stdout keeps the one JSON line)."""
    from rich.table import Table

    chosen = tuning["chosen"]
    table = Table("knob", "values", "HR@20", "MRR@20", "s", title="self-tuning (validation split)")
    for trial in tuning["trials"]:
        values = {k: v for k, v in trial.items() if k not in ("knob", "hr@20", "mrr@20", "seconds")}
        won = all(chosen.get(k) == v for k, v in values.items() if k != "best_epoch")
        table.add_row(
            trial["knob"] + (" *" if won else ""),
            ", ".join(f"{k}={v}" for k, v in values.items()),
            f"{trial['hr@20']:.4f}", f"{trial['mrr@20']:.4f}", f"{trial['seconds']:.1f}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"chosen: {chosen}; {tuning['seconds']:.0f} s (budgets: sizes {tuning['budget_s']:.0f}"
        f" s, learner grid {tuning['learner_budget_s']:.0f} s)"
        + (f", {tuning['skipped']} candidates skipped" if tuning["skipped"] else "")
    )
