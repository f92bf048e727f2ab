"""The main job (``make demo``): the whole loop on the recorded sample, with a report.

1. start the embedded broker (and Redis if none answers) and create this run's topics;
2. train the first model on the sample's first weeks (``streamrec train --until``);
3. start the loop (flow, learner, drift monitor, serving) under the supervisor;
4. replay the rest of the sample at an accelerated speed while a simulated shop asks
   serving for recommendations for live sessions;
5. compare the online model's prequential HR@20 with the frozen first model (static) on
   the same training examples, replay them from the first model with and without exposure
   feedback (``exposure_feedback_effect``), show the experiment's arms (serving splits the shop's
   sessions between the online model and popularity, and explores new items in a share
   of lists; the shop judges each list by its session's next click), write
   ``reports/<run>/report.html`` and print a summary;
6. stop everything it started and delete this run's Redis keys, topics' data and files.

Each run is isolated by its own topic and key prefixes and its own state directory, so a
demo never mixes with a previous one or with anything else on the same broker and Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.table import Table

from loadtest.experiment_report import share_text
from loadtest.load_run import LoadPlan, run_load
from loadtest.loop_session import isolated_environment, running_loop, train_first_model
from loadtest.run_report import RunRecord, Series, write_report
from streamrec.events import iso_to_ms
from streamrec.kafka_clients import broker_answers, make_consumer
from streamrec.local_services import services_down, services_up
from streamrec.redis_connection import connect_redis
from streamrec.redis_keys import RedisKeys
from streamrec.settings import Settings, load_settings
from streamrec.topics import Topics
from streamrec.training_examples import TrainingExample, decode_example, is_next_click

if TYPE_CHECKING:
    from online_models.model.weights import ModelWeights

console = Console(stderr=True)
HR_WINDOW = 2000


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """The demo's knobs; the defaults finish in a few minutes on a 2-core machine."""

    warmup_until: str = "2014-06-15T00:00:00Z"
    speed: float = 30_000.0
    shop_rate: float = 40.0
    train_epochs: int = 3
    reports_dir: Path = Path("reports")
    # The live experiment, unless the environment configures one: arms and exploration.
    experiment_arms: str = "online=0.8,popularity=0.2"
    explore_slots: int = 1
    explore_share: float = 0.2

    def experiment_environment(self) -> dict[str, str]:
        return {
            "STREAMREC_EXPERIMENT_ARMS": self.experiment_arms,
            "STREAMREC_SERVING_EXPLORE_SLOTS": str(self.explore_slots),
            "STREAMREC_SERVING_EXPLORE_SHARE": str(self.explore_share),
        }


def _examples(settings: Settings) -> Iterator[TrainingExample]:
    """Every training example the flow emitted in this run, in partition order."""
    topic = Topics.from_settings(settings.kafka).training_examples
    consumer = make_consumer(settings.kafka, "streamrec-demo-report")
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {}
    for p in partitions:
        ends[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions if ends[p]])
    remaining = sum(ends.values())
    try:
        while remaining > 0:
            messages = consumer.consume(5000, 2.0)
            if not messages:
                return
            for message in messages:
                if message.error() is None:
                    remaining -= 1
                    yield decode_example(message.value())
    finally:
        consumer.close()


def load_version(settings: Settings, version: int) -> ModelWeights:
    """Weights of ``version``, held in memory (the registry may prune it during the run)."""
    from online_models.registry.weight_registry import WeightRegistry

    client = connect_redis(settings.redis.redis_url.get_secret_value())
    return WeightRegistry(settings, client).load(version)


def static_hr_series(settings: Settings, weights: ModelWeights) -> Series:
    """Windowed HR@20 of the frozen first model over this run's training examples."""
    from online_models.model.scorer import SessionScorer

    scorer = SessionScorer.from_weights(weights, settings.model)
    examples = sorted(filter(is_next_click, _examples(settings)), key=lambda e: e.ts)
    hits = np.zeros(len(examples), dtype=bool)
    for start in range(0, len(examples), 512):
        batch = examples[start : start + 512]
        scores = scorer.score_batch([list(e.history) for e in batch])
        for i, example in enumerate(batch):
            row = scorer.index.row(example.target_item)
            if row >= 0:
                hits[start + i] = int((scores[i] >= scores[i, row]).sum()) <= 20
    return _windows(hits)


def online_hr_series(settings: Settings) -> Series:
    """Windowed prequential HR@20 of the online learner, from its signal stream."""
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    keys = RedisKeys(settings.redis.key_prefix)
    hits: list[bool] = []
    for _, fields in client.xrange(keys.learner_signals):
        examples = int(fields[b"examples"])
        hit_count = int(fields[b"hits_at_20"])
        hits.extend([True] * hit_count + [False] * (examples - hit_count))
    return _windows(np.array(hits, dtype=bool))


def exposure_feedback_effect(settings: Settings, weights: ModelWeights) -> dict[str, Any]:
    """The learner from the first model over this run's examples, with and without
    exposure feedback, in the evaluation's simulated shop (it shows each session the
    model's own top 20; the shopper follows the recorded next click). The live loop cannot
    show the effect itself: one learner runs, and an accelerated replay stamps impressions
    in wall-clock time beside 2014 clicks, so the flow's event-time join has no clicks."""
    from online_models.model.covisitation import CovisitationRule
    from online_models.offline.evaluation import exposure_feedback_ranks, summarize

    examples = sorted(filter(is_next_click, _examples(settings)), key=lambda e: e.ts)
    covisitation = CovisitationRule.from_settings(settings.model)
    ranks = exposure_feedback_ranks(weights, examples, settings.learner, covisitation)
    clicks = np.array([e.kind == "click" for e in examples])
    return {
        "summary": {name: summarize(r, clicks) for name, r in ranks.items()},
        "series": {name: _windows(r < 20) for name, r in ranks.items()},
    }


def _windows(hits: np.ndarray) -> Series:
    return [
        (float(end), float(hits[end - HR_WINDOW : end].mean()))
        for end in range(HR_WINDOW, len(hits) + 1, HR_WINDOW)
    ]


def _cleanup(settings: Settings, run_dir: Path) -> None:
    """Delete this run's topics (if the broker outlives it), Redis keys and files."""
    if broker_answers(settings.kafka, timeout_s=1.0):
        AdminClient(settings.kafka.client_config()).delete_topics(
            list(Topics.from_settings(settings.kafka).all()), operation_timeout=10
        )
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    keys = list(client.scan_iter(f"{settings.redis.key_prefix}:*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])
    shutil.rmtree(run_dir, ignore_errors=True)


def run_demo(plan: DemoPlan = DemoPlan()) -> int:
    """Run the main job end to end; 0 when the loop ran and the report was written."""
    signal.signal(signal.SIGTERM, _interrupt)
    run = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = load_settings()
    env = isolated_environment(f"demo-{run}", base.state_dir / "demo" / run)
    env |= {k: v for k, v in plan.experiment_environment().items() if k not in os.environ}
    os.environ.update(env)
    settings = load_settings()
    run_dir = settings.state_dir / "demo" / run
    started = time.monotonic()
    console.rule(f"streamrec demo {run}")
    status = services_up(settings)
    console.print(
        f"services: kafka {status.bootstrap_servers} ({status.broker_ok}), "
        f"redis {status.redis_url} ({status.redis_ok})"
    )
    try:
        console.print(f"training the first model on events before {plan.warmup_until} ...")
        trained = train_first_model(plan.warmup_until, plan.train_epochs)
        first_version = int(trained["version"])
        console.print(f"first model: version {first_version}, validation {trained['metrics']}")
        static_weights = load_version(settings, first_version)
        with running_loop(settings, run_dir / "logs") as supervisor:
            console.print("loop running: flow, learner, drift monitor, serving; replaying ...")
            load = LoadPlan(
                source=settings.data_dir,
                since_ms=iso_to_ms(plan.warmup_until),
                speed=plan.speed,
                shop_rate=plan.shop_rate,
                drain_timeout_s=90,
            )
            record, _, _ = run_load(settings, load, run, progress=sys.stderr.isatty())
            record.summary["process restarts"] = str(supervisor.restarts)
        record.hr_at_20 = {
            "online": online_hr_series(settings),
            "static": static_hr_series(settings, static_weights),
        }
        _summarize_hr(record)
        console.print("replaying the run's examples with and without exposure feedback ...")
        effect = exposure_feedback_effect(settings, static_weights)
        for name, series in effect["series"].items():
            record.hr_at_20[f"{name} (simulated shop)"] = series
        _summarize_exposure_feedback(record, effect["summary"])
        _summarize_experiments(record)
        record.summary["wall time s"] = round(time.monotonic() - started, 1)
        page = write_report(record, plan.reports_dir / run)
        _print_summary(record, page)
        return 0
    finally:
        services_down(settings)
        _cleanup(settings, run_dir)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the run still stops what it started and cleans up."""
    raise KeyboardInterrupt


def _summarize_hr(record: RunRecord) -> None:
    for name, series in record.hr_at_20.items():
        record.summary[f"HR@20 {name} (mean of windows)"] = (
            round(float(np.mean([hr for _, hr in series])), 4) if series else float("nan")
        )


def _summarize_exposure_feedback(record: RunRecord, summary: dict[str, dict[str, float]]) -> None:
    without, with_ = summary["online"], summary["online+exposure"]
    for metric in ("hr@20", "mrr@20", "ctr@20"):
        record.summary[f"exposure feedback {metric.upper()}: without -> with"] = (
            f"{without.get(metric, float('nan')):.4f} -> {with_.get(metric, float('nan')):.4f}"
        )


def _summarize_experiments(record: RunRecord) -> None:
    if not record.experiments:
        return
    for row in record.experiments["arms"]:
        record.summary[f"CTR {row['arm']} (95% interval)"] = share_text(row["ctr"])
    explored = record.experiments["explored_slots"]
    if explored["trials"]:
        record.summary["CTR explored slots (95% interval)"] = share_text(explored)


def _print_summary(record: RunRecord, page: Path) -> None:
    table = Table("figure", "value", title="streamrec demo summary")
    for key, value in record.summary.items():
        table.add_row(key, f"{value:,.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
    Console().print(f"report: {page}")
