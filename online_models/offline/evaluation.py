"""Prequential evaluation: four recommenders on the same stream, each scored before it learns.

Warm-up: every model learns from the examples before the cut-off (the transformer is
trained with ``train``, the same path as ``streamrec train``). Stream: the remaining
examples go by in micro-batches of ``LearnerSettings.batch_size`` in event-time order;
every model ranks a batch's targets among all items it knows (unknown target = miss)
and only then learns from it:

- ``popularity``: decayed counts of recent targets;
- ``session_knn``: V-SKNN, its parameters picked on the warm-up's own validation split
  (never on the evaluated stream);
- ``static``: the warm-up model, frozen;
- ``online``: the warm-up model with ``HeadLearner`` updates (what ``streamrec learn`` does);
- ``online+exposure(neg=..,pos=..)``, one per pair of exposure weights asked for: ``online``
  in a simulated shop (``ShopFeedbackTransformer``) that learns from what it showed.

With ``tune``, the warm-up model's size and the learner's knobs are first fitted on the
warm-up's own validation split (``tuning.fit_to_shop``), and ``online`` uses them.

Every model's ``ctr@20`` is the share of click examples whose next click was in its top 20:
the CTR of a shop that shows a model's top 20 and whose shoppers follow the recorded next
click (it is HR@20 over clicks only; purchases get no list).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.progress import Progress

from flows.exposure_examples import exposure_example
from online_models.learner.micro_batch import HeadLearner
from online_models.model.covisitation import CovisitationRule
from online_models.model.device import pick_device
from online_models.model.item_index import ItemIndex
from online_models.model.ranking_metrics import CUTOFF
from online_models.model.recommender import SessionRecommender
from online_models.model.weights import ModelWeights
from online_models.offline.popularity import RecentPopularity
from online_models.offline.recorded_examples import load_examples
from online_models.offline.session_knn import KnnConfig, SessionKnn
from online_models.offline.training import rank_examples, split_by_time, train
from online_models.offline.tuning import fit_to_shop
from streamrec.events import Event
from streamrec.exposure_outcomes import ExposureJoin, ExposureOutcome
from streamrec.settings import LearnerSettings, Settings
from streamrec.structured_log import log_event
from streamrec.training_examples import TrainingExample

logger = logging.getLogger(__name__)

KNN_GRID = tuple(
    KnnConfig(k, sample_size, normalize)
    for k in (50, 100, 200)
    for sample_size in (500, 1000)
    for normalize in (True, False)
)


class StreamRanker(Protocol):
    """What the evaluation needs from a model: rank a batch, then learn from it."""

    def rank(self, examples: Sequence[TrainingExample]) -> np.ndarray: ...

    def learn(self, examples: Sequence[TrainingExample]) -> None: ...


class FrozenTransformer:
    """The warm-up model, never updated (its item set is fixed too)."""

    def __init__(self, model: SessionRecommender, index: ItemIndex, device: torch.device) -> None:
        self.model, self.index, self.device = model.to(device), index, device

    def rank(self, examples: Sequence[TrainingExample]) -> np.ndarray:
        return rank_examples(self.model, self.index, examples, self.device)

    def learn(self, examples: Sequence[TrainingExample]) -> None:
        return None


class OnlineTransformer:
    """The warm-up model with head updates; its ranks come from before each step."""

    def __init__(self, learner: HeadLearner) -> None:
        self.learner = learner

    def rank(self, examples: Sequence[TrainingExample]) -> np.ndarray:
        outcome = self.learner.learn(examples)  # scores first, then steps
        return outcome.ranks

    def learn(self, examples: Sequence[TrainingExample]) -> None:
        return None  # already learned in ``rank`` (prequential order is kept inside)


class ShopFeedbackTransformer:
    """``OnlineTransformer`` in a simulated shop that closes the feedback loop.

    Before each batch, every click example's session is shown the model's top ``CUTOFF``
    items; the shopper clicks the recorded next item (a click from the list when it is on
    it). Impressions and clicks go through the flow's join and exposure examples
    (``ExposureJoin``, ``exposure_example``), which the learner gets with the next batch,
    as the flow's would reach it after the list was answered.
    """

    def __init__(self, learner: HeadLearner) -> None:
        self.learner = learner
        self.pending: list[TrainingExample] = []

    def rank(self, examples: Sequence[TrainingExample]) -> np.ndarray:
        clicks = [e for e in examples if e.kind == "click"]
        shown = self.learner.top_items(clicks, CUTOFF) if clicks else []
        outcome = self.learner.learn([*self.pending, *examples])  # ranks: ``examples`` only
        self.pending = shop_exposures(clicks, shown)
        return outcome.ranks

    def learn(self, examples: Sequence[TrainingExample]) -> None:
        return None  # learned in ``rank``, as ``OnlineTransformer``


def shop_exposures(
    clicks: Sequence[TrainingExample], shown: Sequence[tuple[str, ...]]
) -> list[TrainingExample]:
    """The exposure examples of showing ``shown[i]`` before ``clicks[i]``: each click cites
    its list, and an outcome closes at the session's next event (a horizon of 1 ms)."""
    join = ExposureJoin(horizon_ms=1)
    histories: dict[str, tuple[str, ...]] = {}
    closed: list[ExposureOutcome] = []
    for example, items in zip(clicks, shown, strict=True):
        request_id = "shop:" + example.example_id
        histories[request_id] = example.history
        session, ts = example.session_id, example.ts
        closed += join.observe(
            Event(request_id, "impression", session, ts, items=items, request_id=request_id)
        )
        closed += join.observe(
            Event(example.example_id, "click", session, ts, example.target_item,
                  request_id=request_id)
        )  # fmt: skip
    closed += join.flush()
    return [exposure_example(o, histories[o.request_id], "", -1, -1) for o in closed]


def stream_ranks(
    models: dict[str, StreamRanker],
    examples: Sequence[TrainingExample],
    batch_size: int,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """Per-example ranks for every model over the stream (rank, then learn, per batch)."""
    ranks: dict[str, list[np.ndarray]] = {name: [] for name in models}
    task = progress.add_task("stream", total=len(examples)) if progress else None
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        for name, model in models.items():
            ranks[name].append(model.rank(batch))
            model.learn(batch)
        if progress is not None and task is not None:
            progress.update(task, advance=len(batch))
    return {name: np.concatenate(parts) for name, parts in ranks.items()}


def exposure_feedback_ranks(
    weights: ModelWeights,
    examples: Sequence[TrainingExample],
    learner: LearnerSettings,
    covisitation: CovisitationRule,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """Prequential ranks of the learner from ``weights`` over ``examples`` without
    exposure feedback (``online``) and in the simulated shop with ``learner``'s exposure
    weights (``online+exposure``): the feedback's effect on one stream."""
    device = pick_device(learner.device)
    off = learner.model_copy(
        update={"exposure_negative_weight": 0.0, "exposure_positive_weight": 0.0}
    )
    models: dict[str, StreamRanker] = {
        "online": OnlineTransformer(HeadLearner.from_weights(weights, off, device, covisitation)),
        "online+exposure": ShopFeedbackTransformer(
            HeadLearner.from_weights(weights, learner, device, covisitation)
        ),
    }
    return stream_ranks(models, examples, learner.batch_size, progress)


def summarize(ranks: np.ndarray, clicks: np.ndarray | None = None) -> dict[str, float]:
    """HR@20 and MRR@20; with ``clicks`` (which examples are clicks), also ``ctr@20``."""
    hits = ranks < CUTOFF
    reciprocal = np.where(hits, 1.0 / (ranks + 1.0), 0.0)
    summary = {"hr@20": float(hits.mean()), "mrr@20": float(reciprocal.mean())}
    if clicks is not None and clicks.any():
        summary["ctr@20"] = float(hits[clicks].mean())
    return summary


def tune_session_knn(warm: list[TrainingExample], validation_fraction: float) -> KnnConfig:
    """The grid point with the best HR@20 on the warm-up's newest examples."""
    base, validation = split_by_time(warm, validation_fraction)
    best: tuple[float, KnnConfig] | None = None
    for config in KNN_GRID:
        knn = SessionKnn(config)
        knn.learn(base)
        hr = summarize(stream_ranks({"knn": knn}, validation, 256)["knn"])["hr@20"]
        log_event(logger, "session_knn_tuning", config=str(config), hr_at_20=hr)
        if best is None or hr > best[0]:
            best = (hr, config)
    assert best is not None
    return best[1]


def run_evaluation(
    settings: Settings,
    sources: Sequence[Path],
    cutoff_ms: int,
    plot_path: Path,
    window: int,
    progress: bool = False,
    stream_until_ms: int | None = None,
    exposure_weights: Sequence[tuple[float, float]] = (),
    baselines: bool = True,
    tune: bool = False,
) -> dict[str, Any]:
    """Warm up on ``sources`` (any recorded source) before ``cutoff_ms``, stream the rest
    (up to ``stream_until_ms``: a dev stream inside a later warm-up), and return
    ``{"examples": N, "models": {...}}`` (and write the plot).

    ``exposure_weights``: (negative, positive) pairs, one ``ShopFeedbackTransformer`` each;
    ``baselines=False`` leaves out popularity, session-kNN and static (weight tuning);
    ``tune``: the size and the learner's knobs are fitted on the warm-up's own validation
    split first (``tuning.fit_to_shop``; the report's ``tuning`` says what was tried).
    """
    examples = load_examples(settings, sources)
    warm = [e for e in examples if e.ts < cutoff_ms]
    end = stream_until_ms if stream_until_ms is not None else math.inf
    stream = [e for e in examples if cutoff_ms <= e.ts < end]
    if not warm or not stream:
        raise ValueError("the cut-off leaves no warm-up or no stream examples")
    log_event(logger, "evaluation_split", warm=len(warm), stream=len(stream))
    report: dict[str, Any] = {}
    learner_settings = settings.learner
    if tune:
        tuning = fit_to_shop(settings, warm, progress=progress)
        trained, learner_settings = tuning.trained, tuning.learner
        report["tuning"] = tuning.report()
        log_event(logger, "evaluation_tuned", **report["tuning"]["chosen"])
    else:
        trained = train(settings.model, settings.train, warm, progress=progress)
    log_event(logger, "evaluation_trained", **trained.metrics)
    models: dict[str, StreamRanker] = {}
    if baselines:
        knn_config = tune_session_knn(warm, settings.train.validation_fraction)
        log_event(logger, "session_knn_chosen", config=str(knn_config))
        popularity = RecentPopularity()
        popularity.learn(warm)
        knn = SessionKnn(knn_config)
        knn.learn(warm)
        static = SessionRecommender.from_weights(trained.weights)
        static_index = ItemIndex(trained.weights.item_ids)
        static_device = pick_device(settings.train.device)
        models["popularity"] = popularity
        models["session_knn"] = knn
        models["static"] = FrozenTransformer(static, static_index, static_device)
        report["session_knn_config"] = {
            "k": knn_config.k,
            "sample_size": knn_config.sample_size,
            "normalize": knn_config.normalize,
        }
    learner_device = pick_device(settings.learner.device)
    covisitation = CovisitationRule.from_settings(settings.model)
    online = HeadLearner.from_weights(
        trained.weights, learner_settings, learner_device, covisitation
    )
    models["online"] = OnlineTransformer(online)
    for negative, positive in exposure_weights:
        learner = learner_settings.model_copy(
            update={"exposure_negative_weight": negative, "exposure_positive_weight": positive}
        )
        head = HeadLearner.from_weights(trained.weights, learner, learner_device, covisitation)
        models[f"online+exposure(neg={negative:g},pos={positive:g})"] = ShopFeedbackTransformer(
            head
        )
    with Progress(disable=not progress, transient=True) as bar:
        ranks = stream_ranks(models, stream, settings.learner.batch_size, bar)
    write_plot(ranks, stream, window, plot_path)
    clicks = np.array([e.kind == "click" for e in stream])
    return {
        "examples": len(stream),
        "warmup_examples": len(warm),
        "models": {name: summarize(r, clicks) for name, r in ranks.items()},
        **report,
        "warmup_validation": trained.metrics,
        "plot": str(plot_path),
    }


def write_plot(
    ranks: dict[str, np.ndarray], stream: Sequence[TrainingExample], window: int, path: Path
) -> None:
    """Windowed HR@20 against event time, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    times = np.array([e.ts for e in stream], dtype="datetime64[ms]")
    starts = range(0, len(stream) - window + 1, max(1, window // 2))
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for name, model_ranks in ranks.items():
        hits = (model_ranks < CUTOFF).astype(np.float64)
        xs = [times[s + window // 2] for s in starts]
        ys = [hits[s : s + window].mean() for s in starts]
        axes.plot(xs, ys, label=f"{name} (HR@20 {hits.mean():.3f})")
    axes.set_title(f"Prequential HR@20, windows of {window} examples")
    axes.set_ylabel("HR@20")
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
    axes.legend()
    axes.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
