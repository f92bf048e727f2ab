"""``streamrec explain`` renders what serving explained: clicks, parts, the top click."""

from __future__ import annotations

from rich.console import Console

from cli.explain import explanation_tables, serving_url
from streamrec.settings import ServingSettings

BODY = {
    "session_id": "s1",
    "explanation": {
        "model_version": 4,
        "arm": "online",
        "fallback_reason": None,
        "attribution": "leave_one_out",
        "events": [
            {"event_id": "ev-1", "ts": 1_700_000_000_000, "item_id": "i1", "known": True},
            {"event_id": "ev-2", "ts": 1_700_000_001_000, "item_id": "i9", "known": False},
        ],
        "items": [
            {
                "item_id": "i1", "score": 1001.5, "source": "model", "popularity": None,
                "session_match": 0.5, "item_bias": 0.25, "session_repeat": 1000.5,
                "co_visitation": 0.25, "event_drops": [1000.9, 0.0], "top_event_id": "ev-1",
            },
            {
                "item_id": "i5", "score": 2.0, "source": "exploration", "popularity": None,
                "session_match": None, "item_bias": None, "session_repeat": None,
                "co_visitation": None, "event_drops": [], "top_event_id": None,
            },
        ],
    },
}  # fmt: skip


def rendered(body: dict) -> str:
    console = Console(width=200, record=True)
    for table in explanation_tables(body):
        console.print(table)
    return console.export_text()


def test_the_tables_show_the_clicks_the_parts_and_the_top_click() -> None:
    text = rendered(BODY)
    assert "version 4, arm online" in text
    assert "2023-11-14T22:13:20+00:00" in text and "ev-2" in text
    assert "ev-1 (1000.9000)" in text and "1000.5000" in text
    assert "exploration" in text


def test_a_fallback_says_why_in_the_title() -> None:
    body = {**BODY, "explanation": {**BODY["explanation"], "fallback_reason": "no_model"}}
    assert "popular items (no_model)" in rendered(body)


def test_a_wildcard_bind_address_is_asked_on_this_host() -> None:
    assert serving_url(ServingSettings(host="0.0.0.0", port=8123)) == "http://127.0.0.1:8123"
