"""``streamrec evaluate`` on any recorded source: a shop's own delimited log included."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.synthetic_traffic import GeneratorConfig, Scenario, generate
from online_models.offline.evaluation import run_evaluation
from streamrec.settings import LearnerSettings, Settings, TrainSettings


def test_a_delimited_log_is_evaluated_like_the_sample(tmp_path: Path) -> None:
    generated, _ = generate(GeneratorConfig(Scenario.STATIONARY, events=4000, seed=5))
    lines = list(generated)
    rows = ["ts,session,item,kind"]
    for line in lines:
        event = json.loads(line)
        rows.append(f"{event['ts']},{event['session_id']},{event['item_id']},{event['type']}")
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "shop.yaml").write_text(
        "format: delimited\npath: log.csv\n"
        "columns: {ts: ts, session_id: session, item_id: item, type: kind}\n"
        "click_values: [click]\npurchase_values: [purchase]\n"
    )
    times = sorted(json.loads(line)["ts"] for line in lines)
    settings = Settings(
        train=TrainSettings(epochs=1, max_steps_per_epoch=10),
        learner=LearnerSettings(batch_size=128),
    )
    report = run_evaluation(
        settings, [tmp_path / "shop.yaml"], times[len(times) // 2], tmp_path / "p.png", 200
    )
    assert report["examples"] > 500 and report["warmup_examples"] > 500
    assert set(report["models"]) == {"popularity", "session_knn", "static", "online"}
    assert all(0 <= m["hr@20"] <= 1 for m in report["models"].values())
    assert report["models"]["session_knn"]["hr@20"] > report["models"]["popularity"]["hr@20"]
    assert (tmp_path / "p.png").exists()
