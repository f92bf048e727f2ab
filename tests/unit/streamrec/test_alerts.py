"""The alert record: round trip, severities, runbook links (pure)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from online_models.drift.detectors import DETECTOR_NAMES
from streamrec.alerts import (
    RUNBOOK_ANCHORS,
    SEVERITIES,
    Severity,
    StreamOffset,
    alert_as_dict,
    decode_alert,
    encode_alert,
    make_alert,
)

levels = st.floats(allow_nan=True, allow_infinity=False, width=64)


@given(
    st.sampled_from(sorted(RUNBOOK_ANCHORS)),
    levels,
    levels,
    st.integers(0, 10**12),
    st.one_of(st.none(), st.integers(0, 10**9)),
    st.text(max_size=50),
)
def test_alerts_survive_encoding(
    detector: str, before: float, after: float, position: int, version: int | None, message: str
) -> None:
    alert = make_alert(
        detector, "hit@20", before, after, position, version, message,
        (StreamOffset("t", 1, 2),),
    )  # fmt: skip
    back = decode_alert(encode_alert(alert))
    assert alert_as_dict(back) == alert_as_dict(alert)
    assert math.isnan(back.level_before) == math.isnan(before)


def test_every_detector_has_a_runbook_section_and_severity() -> None:
    for name in DETECTOR_NAMES:
        alert = make_alert(name, "s", 1.0, 0.5, 10, 3)
        assert alert.runbook == f"docs/runbook.md#{RUNBOOK_ANCHORS[name]}"
        assert isinstance(alert.severity, Severity)
    # Only what a person must act on pages: a drop warns, a drop that did not heal pages.
    assert make_alert("hit_rate", "s", 1, 0, 1, 1).severity is Severity.WARNING
    assert make_alert("quality_not_recovered", "s", 1, 0, 1, 1).severity is Severity.CRITICAL


def test_decode_refuses_other_bytes() -> None:
    with pytest.raises(ValueError, match="not an alert"):
        decode_alert(b'{"detector": "x"}')


def test_every_alert_source_has_both_a_severity_and_a_runbook_section() -> None:
    assert set(SEVERITIES) == set(RUNBOOK_ANCHORS)
    assert set(DETECTOR_NAMES) <= set(RUNBOOK_ANCHORS)


def test_the_learner_guard_alert_decodes_like_every_other_alert() -> None:
    offsets = (StreamOffset("clicks", 0, 41), StreamOffset("clicks", 2, 7))
    alert = make_alert(
        "learner_guard", "non_finite_loss", math.nan, math.nan, 1234, 17,
        "skipped a micro-batch of 8 examples: non_finite_loss", offsets,
    )  # fmt: skip
    back = decode_alert(encode_alert(alert))
    assert back.severity is Severity.WARNING
    assert back.runbook == "docs/runbook.md#learner-guard"
    assert math.isnan(back.level_before) and math.isnan(back.level_after)
    assert (back.position, back.model_version, back.offsets) == (1234, 17, offsets)
    assert alert_as_dict(back) == alert_as_dict(alert)
