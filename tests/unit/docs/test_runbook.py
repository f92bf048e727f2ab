"""Every alert points at a runbook section that exists and says what to do."""

from __future__ import annotations

import re

from streamrec.alerts import RUNBOOK, RUNBOOK_ANCHORS
from tests.conftest import REPO_ROOT as ROOT


def heading_anchors(markdown: str) -> dict[str, str]:
    """GitHub's anchor for each ``##`` heading -> the section's text."""
    sections: dict[str, str] = {}
    parts = re.split(r"^## (.+)$", markdown, flags=re.MULTILINE)
    for title, body in zip(parts[1::2], parts[2::2], strict=True):
        anchor = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        sections[anchor] = body
    return sections


def test_each_alert_source_has_a_complete_runbook_section() -> None:
    sections = heading_anchors((ROOT / RUNBOOK).read_text())
    for source, anchor in RUNBOOK_ANCHORS.items():
        assert anchor in sections, f"{source}: no '## ' heading for #{anchor}"
        body = sections[anchor]
        for part in ("**Means.**", "**Confirm.**", "**Do.**"):
            assert part in body, f"#{anchor} lacks {part}"
