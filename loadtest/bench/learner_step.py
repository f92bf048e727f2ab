"""``streamrec bench learner --step-only``: the head step alone, without broker or Redis.

Needs only torch and the project (and the recorded sample), so it runs on a bare GPU box.
For each batch size (256, 1024, 4096 by default): a fresh ``HeadLearner`` from random
weights (``items`` synthetic items first, for a large catalog), the sample's examples in
micro-batches, each prepared in a worker thread while the previous one steps
(``prefetched``); the first quarter warms up (the catalog grows), the rest is timed in
wall time: ``examples_per_s`` and the step's p50. The fixed overhead per step is the
intercept of the line of step time against batch size through the two smallest sizes.
On CUDA the torch profiler, over a few steps at the largest size, gives the share of
wall time the GPU is busy (the union of its kernels' intervals).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from flows.example_builder import examples_from_events
from flows.feature_config import FeatureConfig
from online_models.learner.micro_batch import HeadLearner
from online_models.learner.prepared_batch import prefetched
from online_models.model.covisitation import CovisitationRule
from online_models.model.device import synchronize
from online_models.model.recommender import random_weights
from streamrec.events import EventLimits
from streamrec.recorded_events import only_events, read_recorded
from streamrec.settings import Settings
from streamrec.training_examples import TrainingExample

PROFILED_STEPS = 6


def sample_examples(settings: Settings, count: int) -> list[TrainingExample]:
    """The first ``count`` training examples of the recorded sample, as the flow builds them."""
    events = only_events(
        read_recorded(settings.data_dir, EventLimits.from_settings(settings.events))
    )
    features = FeatureConfig.from_settings(settings.flow)
    return list(examples_from_events(events, features))[:count]


def run_step_benchmark(
    settings: Settings,
    examples: Sequence[TrainingExample],
    device: torch.device,
    batch_sizes: Sequence[int],
    items: int = 0,
) -> dict[str, Any]:
    """One JSON-ready report: throughput per batch size, fixed overhead, GPU-busy share."""
    if settings.learner.torch_threads:
        torch.set_num_threads(settings.learner.torch_threads)
    sizes: dict[str, Any] = {}
    step_ms: list[float] = []
    gpu_busy: float | None = None
    compiled = []
    for batch_size in batch_sizes:
        learner = _learner(settings, device, items)
        batches = [examples[s : s + batch_size] for s in range(0, len(examples), batch_size)]
        warm = max(1, len(batches) // 4)
        for batch in prefetched(batches[:warm]):
            learner.learn(batch)
        timed, seconds = _timed(learner, batches[warm:], device)
        median_ms = float(np.median(seconds)) * 1000
        step_ms.append(median_ms)
        sizes[str(batch_size)] = {
            "examples_per_s": round(timed / sum(seconds), 1),
            "step_ms_p50": round(median_ms, 3),
            "steps": len(seconds),
        }
        if device.type == "cuda" and batch_size == max(batch_sizes):
            gpu_busy = _gpu_busy_share(learner, batches[warm : warm + PROFILED_STEPS])
        compiled.append(learner.encoder_compiled)
    # The line through the two smallest sizes: a larger batch also brings more targets
    # into the sampled softmax, so step time grows faster than B over the whole range.
    small = np.argsort(batch_sizes)[:2]
    slope, intercept = np.polyfit(
        np.asarray(batch_sizes, float)[small], np.asarray(step_ms)[small], 1
    )
    return {
        "mode": "step_only",
        "device": str(device),
        "examples_per_s": {size: report["examples_per_s"] for size, report in sizes.items()},
        "batch_sizes": sizes,
        "fixed_overhead_ms": round(float(intercept), 3),
        "per_example_us": round(float(slope) * 1000, 3),
        "gpu_busy_share": gpu_busy,
        # which encoder code the figures are of (``online_models/model/compiled_backbone``)
        "encoder_compiled": all(compiled),
        "items": items,
        "torch_threads": torch.get_num_threads(),
        "examples": len(examples),
    }


def _learner(settings: Settings, device: torch.device, items: int) -> HeadLearner:
    covisitation = CovisitationRule.from_settings(settings.model)
    weights = random_weights(items, settings.model)
    return HeadLearner.from_weights(weights, settings.learner, device, covisitation)


def _timed(
    learner: HeadLearner, batches: list[Sequence[TrainingExample]], device: torch.device
) -> tuple[int, list[float]]:
    """Examples stepped and the wall seconds of each step (queued device work included)."""
    seconds: list[float] = []
    examples = 0
    synchronize(device)
    began = time.perf_counter()
    for batch in prefetched(batches):
        learner.learn(batch)
        synchronize(device)
        now = time.perf_counter()
        seconds.append(now - began)
        began = now
        examples += len(batch)
    return examples, seconds


def _gpu_busy_share(learner: HeadLearner, batches: list[Sequence[TrainingExample]]) -> float:
    """Busy share of the GPU over a few steps: union of kernel intervals / wall time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    synchronize(learner.device)
    with profile(activities=activities) as profiler:
        began = time.perf_counter()
        for batch in prefetched(batches):
            learner.learn(batch)
        synchronize(learner.device)
        wall_us = (time.perf_counter() - began) * 1e6
    spans = sorted(
        (event.time_range.start, event.time_range.end)
        for event in profiler.events()
        if event.device_type == torch.autograd.DeviceType.CUDA
    )
    busy, end = 0.0, float("-inf")
    for start, stop in spans:
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return round(busy / wall_us, 3) if wall_us else 0.0
