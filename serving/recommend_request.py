"""Validation of a recommendation request, from a query string or a JSON body.

Both forms produce the same ``RecommendRequest`` or a ``RequestProblem`` with the HTTP
status and a stable error code, so every bad input gets a clear 4xx and the handlers stay
free of parsing. Validation is strict: unknown or repeated parameters are refused rather
than ignored, so a client's typo is reported instead of silently changing the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from streamrec.events import MAX_ID_CHARS

ID_PATTERN = re.compile(rf"[A-Za-z0-9_.:@-]{{1,{MAX_ID_CHARS}}}")
MAX_CATEGORIES = 50
QUERY_PARAMETERS = frozenset({"session_id", "k", "category", "exclude_bought", "explain"})
BODY_FIELDS = frozenset(
    {"session_id", "k", "categories", "exclude_bought", "exclude_items", "explain"}
)
_TRUE = {"true": True, "1": True, "false": False, "0": False}


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The bounds every request is checked against (from ``ServingSettings``)."""

    max_k: int = 100
    default_k: int = 20
    max_exclude_items: int = 1000


@dataclass(frozen=True, slots=True)
class RecommendRequest:
    """A valid request. ``categories`` empty means no category filter; ``explain`` asks
    for the why of every item (``serving.explanation``)."""

    session_id: str
    k: int
    exclude_bought: bool = True
    categories: tuple[str, ...] = ()
    exclude_items: tuple[str, ...] = ()
    explain: bool = False


@dataclass(frozen=True, slots=True)
class RequestProblem:
    """Why a request was refused: HTTP status, stable code, human-readable detail."""

    status: int
    error: str
    detail: str

    def body(self) -> dict[str, str]:
        return {"error": self.error, "detail": self.detail}


def parse_query(
    pairs: list[tuple[str, str]], limits: RequestLimits
) -> RecommendRequest | RequestProblem:
    """Validate ``GET /recommend`` parameters (decoded query pairs, in order)."""
    seen: dict[str, str] = {}
    for name, value in pairs:
        if name not in QUERY_PARAMETERS:
            return _invalid("unknown_parameter", f"unknown query parameter {name[:40]!r}")
        if name in seen:
            return _invalid("repeated_parameter", f"{name} given more than once")
        seen[name] = value
    if "session_id" not in seen:
        return _invalid("missing_parameter", "session_id is required")
    k: int | RequestProblem = limits.default_k
    if "k" in seen:
        raw_k = seen["k"]
        if not raw_k.isascii() or not raw_k.isdigit() or len(raw_k) > 6:
            return _invalid("invalid_k", f"k must be an integer in 1..{limits.max_k}")
        k = _check_k(int(raw_k), limits)
    exclude_bought = _query_flag(seen, "exclude_bought", True)
    explain = _query_flag(seen, "explain", False)
    if isinstance(exclude_bought, RequestProblem):
        return exclude_bought
    if isinstance(explain, RequestProblem):
        return explain
    categories: tuple[str, ...] = ()
    if "category" in seen:
        categories = (seen["category"],)
    return _build(seen["session_id"], k, exclude_bought, categories, (), explain)


def _query_flag(seen: dict[str, str], name: str, default: bool) -> bool | RequestProblem:
    """A true/false (or 1/0) query parameter, ``default`` when absent."""
    if name not in seen:
        return default
    flag = _TRUE.get(seen[name].lower())
    if flag is None:
        return _invalid(f"invalid_{name}", f"{name} must be true or false")
    return flag


def parse_body(body: bytes, limits: RequestLimits) -> RecommendRequest | RequestProblem:
    """Validate a ``POST /recommend`` JSON body (already size-checked)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _invalid("malformed_json", "the body is not valid JSON")
    if not isinstance(obj, dict):
        return _invalid("invalid_body", "the body must be a JSON object")
    unknown = sorted(set(obj) - BODY_FIELDS)
    if unknown:
        return _invalid("unknown_parameter", f"unknown field {unknown[0][:40]!r}")
    session_id = obj.get("session_id")
    if session_id is None:
        return _invalid("missing_parameter", "session_id is required")
    if not isinstance(session_id, str):
        return _invalid("invalid_session_id", "session_id must be a string")
    raw_k = obj.get("k", limits.default_k)
    if isinstance(raw_k, bool) or not isinstance(raw_k, int):
        return _invalid("invalid_k", f"k must be an integer in 1..{limits.max_k}")
    exclude_bought = obj.get("exclude_bought", True)
    if not isinstance(exclude_bought, bool):
        return _invalid("invalid_exclude_bought", "exclude_bought must be true or false")
    explain = obj.get("explain", False)
    if not isinstance(explain, bool):
        return _invalid("invalid_explain", "explain must be true or false")
    categories = _string_list(obj.get("categories", []), "categories", MAX_CATEGORIES)
    if isinstance(categories, RequestProblem):
        return categories
    excluded = _string_list(obj.get("exclude_items", []), "exclude_items", limits.max_exclude_items)
    if isinstance(excluded, RequestProblem):
        return excluded
    return _build(
        session_id, _check_k(raw_k, limits), exclude_bought, categories, excluded, explain
    )


def _build(
    session_id: str,
    k: int | RequestProblem,
    exclude_bought: bool,
    categories: tuple[str, ...],
    exclude_items: tuple[str, ...],
    explain: bool,
) -> RecommendRequest | RequestProblem:
    if not ID_PATTERN.fullmatch(session_id):
        return _invalid(
            "invalid_session_id", f"session_id must be 1..{MAX_ID_CHARS} of [A-Za-z0-9_.:@-]"
        )
    if isinstance(k, RequestProblem):
        return k
    for category in categories:
        if not ID_PATTERN.fullmatch(category):
            return _invalid(
                "invalid_category", f"a category must be 1..{MAX_ID_CHARS} of [A-Za-z0-9_.:@-]"
            )
    return RecommendRequest(session_id, k, exclude_bought, categories, exclude_items, explain)


def _check_k(k: int, limits: RequestLimits) -> int | RequestProblem:
    if not 1 <= k <= limits.max_k:
        return _invalid("invalid_k", f"k must be an integer in 1..{limits.max_k}")
    return k


def _string_list(value: Any, name: str, max_len: int) -> tuple[str, ...] | RequestProblem:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return _invalid(f"invalid_{name}", f"{name} must be a list of strings")
    if len(value) > max_len:
        return _invalid(f"invalid_{name}", f"{name} holds at most {max_len} entries")
    if not all(ID_PATTERN.fullmatch(v) for v in value):
        return _invalid(
            f"invalid_{name}", f"each of {name} must be 1..{MAX_ID_CHARS} of [A-Za-z0-9_.:@-]"
        )
    return tuple(value)


def _invalid(error: str, detail: str) -> RequestProblem:
    return RequestProblem(400, error, detail)
