"""The learner's guard alert is an ordinary alert record (pure; no broker)."""

from __future__ import annotations

import math

from online_models.learner.alerts import ALERT_OFFSETS, guard_alert
from streamrec.alerts import Severity, StreamOffset, alert_as_dict, decode_alert, encode_alert
from streamrec.training_examples import TrainingExample


def batch(count: int) -> list[TrainingExample]:
    return [
        TrainingExample(
            f"e{n}",
            f"s{n}",
            ("a", "b"),
            "c",
            ts=n,
            source_topic="clicks",
            source_partition=n % 3,
            source_offset=100 + n,
        )  # fmt: skip
        for n in range(count)
    ]


def test_a_skipped_batch_alert_decodes_with_its_reason_version_and_offsets() -> None:
    examples = batch(25)
    alert = guard_alert("non_finite_gradient", examples, examples_seen=640, model_version=9)
    back = decode_alert(encode_alert(alert))
    assert alert_as_dict(back) == alert_as_dict(alert)  # NaN levels: no dataclass ==
    assert (back.detector, back.signal, back.severity) == (
        "learner_guard", "non_finite_gradient", Severity.WARNING,
    )  # fmt: skip
    assert back.runbook == "docs/runbook.md#learner-guard"
    assert math.isnan(back.level_before) and math.isnan(back.level_after)
    assert (back.position, back.model_version) == (640, 9)
    assert back.message == "skipped a micro-batch of 25 examples: non_finite_gradient"
    assert back.offsets == tuple(
        StreamOffset("clicks", n % 3, 100 + n) for n in range(ALERT_OFFSETS)
    )
