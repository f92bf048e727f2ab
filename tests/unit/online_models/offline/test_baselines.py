"""Baselines and cold start: behaviours the evaluation relies on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import torch

from online_models.model.ranking_metrics import MISS_RANK
from online_models.model.text_cold_start import item_vectors_from_catalog
from online_models.offline.popularity import RecentPopularity
from online_models.offline.session_knn import KnnConfig, SessionKnn
from online_models.offline.training import train
from streamrec.settings import ModelSettings, TrainSettings
from streamrec.training_examples import TrainingExample

DAY_MS = 86_400_000


def example(session: str, history: tuple[str, ...], target: str, ts: int = 0) -> TrainingExample:
    return TrainingExample(f"{session}-{target}-{ts}", session, history, target, ts)


def test_recent_popularity_prefers_recent_counts_and_misses_unknown_items() -> None:
    popularity = RecentPopularity(half_life_s=86400)
    popularity.learn([example(f"o{i}", ("x",), "old", 0) for i in range(3)])
    popularity.learn([example(f"n{i}", ("x",), "new", 5 * DAY_MS) for i in range(2)])
    ranks = popularity.rank(
        [example("q", ("x",), "new"), example("q", ("x",), "old"), example("q", ("x",), "??")]
    )
    assert ranks.tolist() == [0, 1, MISS_RANK]


def test_session_knn_recommends_what_similar_sessions_clicked_next() -> None:
    knn = SessionKnn(KnnConfig(k=10, sample_size=100, normalize=True))
    knn.learn([example(f"s{i}", ("a", "b"), "c") for i in range(5)])
    knn.learn([example(f"t{i}", ("d",), "e") for i in range(5)])
    ranks = knn.rank([example("me", ("a", "b"), "c"), example("me", ("a", "b"), "e")])
    assert ranks[0] < ranks[1]
    assert knn.rank([example("me", ("zzz",), "c")])[0] > 2  # no neighbours: no evidence


def test_catalog_text_gives_similar_items_similar_initial_rows(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.jsonl"
    lines = [
        {"item_id": "boot-1", "text": "waterproof leather hiking boots for men"},
        {"item_id": "boot-2", "text": "men's leather hiking boots, waterproof"},
        {"item_id": "tea", "text": "organic green tea leaves, 500 g tin"},
    ]
    catalog.write_bytes(b"\n".join(orjson.dumps(line) for line in lines))
    settings = ModelSettings(hidden_size=32, catalog_path=catalog)
    rows = item_vectors_from_catalog(settings, ["boot-1", "boot-2", "tea", "no-text"], 32)
    unit = torch.nn.functional.normalize(rows, dim=1)
    assert float(unit[0] @ unit[1]) > float(unit[0] @ unit[2]) + 0.2
    assert rows.shape == (4, 32) and torch.isfinite(rows).all()
    small = ModelSettings(
        hidden_size=32, num_layers=1, num_heads=2, max_seq_len=4, catalog_path=catalog
    )
    examples = [example(f"s{i}", ("boot-1",), "boot-2", i) for i in range(20)]
    result = train(small, TrainSettings(epochs=1, batch_size=8), examples)
    table = result.weights.tensors["head.item_table"]
    assert np.isfinite(table).all() and result.weights.item_ids == ["boot-1", "boot-2"]
