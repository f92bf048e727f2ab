"""Self-tuning: knobs picked on the warm-up's validation split, bounded, reported, and
handed to the learner without overriding what was set explicitly."""

from __future__ import annotations

import json
import random

import pytest
import torch

from online_models.offline import tuning
from online_models.offline.tuning import fit_to_shop, learner_candidates, size_candidates
from streamrec.settings import (
    LearnerSettings,
    ModelSettings,
    Settings,
    TrainSettings,
    TuneSettings,
    fitted_values,
    with_fitted,
)
from streamrec.training_examples import TrainingExample


def shop_examples(count: int = 600, items: int = 40, seed: int = 0) -> list[TrainingExample]:
    """Sessions that walk a ring of items: the next item is mostly the following one."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        start = rng.randrange(items)
        history = tuple(f"i{(start + k) % items}" for k in range(rng.randint(1, 3)))
        step = len(history) if rng.random() < 0.8 else rng.randrange(items)
        out.append(TrainingExample(f"e{i}", f"s{i}", history, f"i{(start + step) % items}", i))
    return out


def tiny_settings(**tune: object) -> Settings:
    return Settings(
        model=ModelSettings(hidden_size=16, num_layers=1, num_heads=2, max_seq_len=4),
        train=TrainSettings(epochs=2, batch_size=64, device="cpu"),
        learner=LearnerSettings(batch_size=32, device="cpu", torch_threads=0),
        tune=TuneSettings(**({"row_lrs": (0.5, 2.0), "negatives": (8, 16)} | tune)),
    )


def test_the_grid_keeps_an_explicit_knob_at_its_one_value() -> None:
    settings = tiny_settings()
    grid = [(c.row_lr, c.sampled_negatives) for c in learner_candidates(settings)]
    assert grid == [(0.5, 8), (0.5, 16), (2.0, 8), (2.0, 16)]
    explicit = settings.model_copy(
        update={"learner": LearnerSettings(row_lr=3.0, device="cpu", batch_size=32)}
    )
    assert [(c.row_lr, c.sampled_negatives) for c in learner_candidates(explicit)] == [
        (3.0, 8),
        (3.0, 16),
    ]


def test_on_cpu_only_the_configured_size_is_tried_unless_presets_are_listed() -> None:
    assert [m.hidden_size for m in size_candidates(tiny_settings())] == [16]
    listed = tiny_settings(presets=("default", "large"))
    assert [m.hidden_size for m in size_candidates(listed)] == [64, 256]


def test_fitting_picks_the_best_validation_trial_and_reports_every_one() -> None:
    settings = tiny_settings()
    tuning = fit_to_shop(settings, shop_examples())
    report = json.loads(json.dumps(tuning.report()))
    learner_trials = [t for t in report["trials"] if t["knob"] == "learner"]
    assert len(learner_trials) == 4 and report["skipped"] == 0
    best = max(learner_trials, key=lambda t: (t["hr@20"], t["mrr@20"]))
    chosen = report["chosen"]
    assert (chosen["row_lr"], chosen["sampled_negatives"]) == (
        best["row_lr"],
        best["sampled_negatives"],
    )
    assert tuning.fitted() == {
        "learner.row_lr": best["row_lr"],
        "learner.sampled_negatives": float(best["sampled_negatives"]),
    }
    again = fit_to_shop(settings, shop_examples()).report()
    assert [t["hr@20"] for t in again["trials"]] == [t["hr@20"] for t in report["trials"]]


def test_a_spent_budget_stops_its_search_after_the_first_candidate() -> None:
    both = fit_to_shop(
        tiny_settings(presets=("default", "large"), budget_s=1e-6, learner_budget_s=1e-6),
        shop_examples(300),
    )
    assert [t.knob for t in both.trials] == ["size", "learner"]
    assert both.skipped == 1 + 3
    assert both.report()["learner_budget_s"] == 1e-6


def test_a_size_search_that_spends_its_budget_leaves_the_learner_grid_its_own() -> None:
    tuning = fit_to_shop(
        tiny_settings(presets=("default", "large"), budget_s=1e-6), shop_examples(300)
    )
    assert [t.knob for t in tuning.trials] == ["size", "learner", "learner", "learner", "learner"]
    assert tuning.skipped == 1  # the second size only


def test_fitted_knobs_fill_only_what_was_not_set_explicitly() -> None:
    metrics = {"hr@20": 0.5, "learner.row_lr": 4.0, "learner.sampled_negatives": 2048.0}
    fitted = fitted_values(metrics)
    assert fitted == {"learner.row_lr": 4.0, "learner.sampled_negatives": 2048.0}
    applied = with_fitted(LearnerSettings(), fitted)
    assert (applied.row_lr, applied.sampled_negatives) == (4.0, 2048)
    assert isinstance(applied.sampled_negatives, int)
    assert with_fitted(LearnerSettings(row_lr=1.5), fitted).row_lr == 1.5


def test_on_cuda_the_gpu_presets_are_tried_unless_a_size_was_set_explicitly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tuning, "pick_device", lambda _: torch.device("cuda"))
    free = Settings(train=TrainSettings(device="cuda"))
    assert [m.hidden_size for m in size_candidates(free)] == [64, 256, 512]
    assert [m.hidden_size for m in size_candidates(tiny_settings())] == [16]  # explicit size
    preset = Settings(model=ModelSettings(preset="large"), train=TrainSettings(device="cuda"))
    assert [m.preset for m in size_candidates(preset)] == ["large"]


def test_presets_and_grids_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_TUNE_ROW_LRS", "1, 3")
    monkeypatch.setenv("STREAMREC_TUNE_PRESETS", "default,large")
    tune = TuneSettings()
    assert tune.row_lrs == (1.0, 3.0) and tune.presets == ("default", "large")
    monkeypatch.setenv("STREAMREC_TUNE_PRESETS", "huge")
    with pytest.raises(ValueError, match="unknown model presets"):
        TuneSettings()


def test_a_model_still_improving_at_its_epoch_cap_trains_again_with_twice_the_epochs() -> None:
    settings = tiny_settings(row_lrs=(2.0,), negatives=(8,))
    values = TrainSettings(epochs=1, batch_size=64, lr=1e-3, device="cpu").model_dump()
    implicit = TrainSettings.model_construct(_fields_set=set(), **values)  # no explicit cap
    tuning = fit_to_shop(settings.model_copy(update={"train": implicit}), shop_examples())
    runs = [t for t in tuning.trials if t.knob == "size"]
    assert [t.values["epochs"] for t in runs][:2] == [1, 2]
    assert tuning.trained.metrics["hr@20"] == max(t.hr_at_20 for t in runs)
    explicit_cap = settings.model_copy(update={"train": TrainSettings(**values)})
    explicit = fit_to_shop(explicit_cap, shop_examples())
    assert [t.values["epochs"] for t in explicit.trials if t.knob == "size"] == [1]
