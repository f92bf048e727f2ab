"""Request validation: every bad input gets a 4xx with a stable error code."""

from __future__ import annotations

import orjson
import pytest

from serving.recommend_request import (
    RecommendRequest,
    RequestLimits,
    RequestProblem,
    parse_body,
    parse_query,
)

LIMITS = RequestLimits(max_k=100, default_k=20, max_exclude_items=3)


def test_query_defaults() -> None:
    assert parse_query([("session_id", "abc-1")], LIMITS) == RecommendRequest("abc-1", 20)


def test_query_with_every_option() -> None:
    parsed = parse_query(
        [
            ("session_id", "s"),
            ("k", "5"),
            ("category", "S"),
            ("exclude_bought", "false"),
            ("explain", "true"),
        ],
        LIMITS,
    )
    expected = RecommendRequest("s", 5, exclude_bought=False, categories=("S",), explain=True)
    assert parsed == expected


@pytest.mark.parametrize(
    ("pairs", "error"),
    [
        ([], "missing_parameter"),
        ([("k", "5")], "missing_parameter"),
        ([("session_id", "")], "invalid_session_id"),
        ([("session_id", "a b")], "invalid_session_id"),
        ([("session_id", "x" * 129)], "invalid_session_id"),
        ([("session_id", "s"), ("k", "0")], "invalid_k"),
        ([("session_id", "s"), ("k", "101")], "invalid_k"),
        ([("session_id", "s"), ("k", "-1")], "invalid_k"),
        ([("session_id", "s"), ("k", "2.5")], "invalid_k"),
        ([("session_id", "s"), ("k", "")], "invalid_k"),
        ([("session_id", "s"), ("k", "١")], "invalid_k"),
        ([("session_id", "s"), ("exclude_bought", "maybe")], "invalid_exclude_bought"),
        ([("session_id", "s"), ("explain", "yes")], "invalid_explain"),
        ([("session_id", "s"), ("category", "a/b")], "invalid_category"),
        ([("session_id", "s"), ("session_id", "t")], "repeated_parameter"),
        ([("session_id", "s"), ("kk", "1")], "unknown_parameter"),
    ],
)
def test_bad_query_is_refused_with_its_code(pairs: list[tuple[str, str]], error: str) -> None:
    problem = parse_query(pairs, LIMITS)
    assert isinstance(problem, RequestProblem)
    assert (problem.status, problem.error) == (400, error)


def test_body_with_every_option() -> None:
    body = {
        "session_id": "s1",
        "k": 7,
        "exclude_bought": False,
        "categories": ["1", "S"],
        "exclude_items": ["a", "b"],
        "explain": True,
    }
    assert parse_body(orjson.dumps(body), LIMITS) == RecommendRequest(
        "s1", 7, False, ("1", "S"), ("a", "b"), explain=True
    )


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{", "malformed_json"),
        (b"[1]", "invalid_body"),
        (b"{}", "missing_parameter"),
        (b'{"session_id": 5}', "invalid_session_id"),
        (b'{"session_id": "s", "k": true}', "invalid_k"),
        (b'{"session_id": "s", "k": "5"}', "invalid_k"),
        (b'{"session_id": "s", "k": 1000}', "invalid_k"),
        (b'{"session_id": "s", "exclude_bought": 1}', "invalid_exclude_bought"),
        (b'{"session_id": "s", "explain": "true"}', "invalid_explain"),
        (b'{"session_id": "s", "categories": "1"}', "invalid_categories"),
        (b'{"session_id": "s", "categories": [1]}', "invalid_categories"),
        (b'{"session_id": "s", "exclude_items": ["a","b","c","d"]}', "invalid_exclude_items"),
        (b'{"session_id": "s", "exclude_items": ["a b"]}', "invalid_exclude_items"),
        (b'{"session_id": "s", "extra": 1}', "unknown_parameter"),
    ],
)
def test_bad_body_is_refused_with_its_code(body: bytes, error: str) -> None:
    problem = parse_body(body, LIMITS)
    assert isinstance(problem, RequestProblem)
    assert (problem.status, problem.error) == (400, error)
    assert problem.body() == {"error": error, "detail": problem.detail}
