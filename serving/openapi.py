"""The OpenAPI 3.1 description of the HTTP API, built from the response models.

The request handlers write JSON with orjson for speed; the pydantic models here are the
documented shape of each body. The document's schemas are generated from these same
models, and the tests validate real responses against them, so the description cannot
drift from what the server sends.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from serving.recommend_request import MAX_CATEGORIES
from streamrec.events import MAX_ID_CHARS
from streamrec.settings import ServingSettings

ID_REGEX = rf"^[A-Za-z0-9_.:@-]{{1,{MAX_ID_CHARS}}}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RecommendedItem(_Strict):
    item_id: str
    score: float = Field(description="Model score, or decayed popularity for a fallback.")


class ExplainedEvent(_Strict):
    event_id: str | None = Field(
        description="The click's event id (null: the session was written before event ids "
        "were stored; empty: the click came from a flow state saved before they were)."
    )
    ts: int | None = Field(description="The click's event time, epoch ms.")
    item_id: str
    known: bool = Field(description="The serving version knows the item (else it is skipped).")


class ExplainedItem(_Strict):
    item_id: str
    score: float = Field(description="The score in the answer.")
    source: Literal["model", "popularity", "exploration"] = Field(
        description="Ranked by the model, a popular item (fallback), or an exploration slot."
    )
    popularity: float | None = Field(description="Decayed popularity, for a popular item.")
    session_match: float | None = Field(description="Session vector . item vector.")
    item_bias: float | None = Field(description="The item's learned bias.")
    session_repeat: float | None = Field(
        description="Learned repeat bonus + the constant lift of an item the session clicked."
    )
    co_visitation: float | None = Field(
        description="Blend x position-weighted log1p(how often the item was clicked next "
        "after the session's items in recent sessions); session_match + item_bias + "
        "session_repeat + co_visitation = score (float rounding aside)."
    )
    event_drops: list[float] = Field(
        description="Per event (aligned with events): the drop of this item's score when that "
        "click is left out of the history (leave-one-out)."
    )
    top_event_id: str | None = Field(
        description="The event with the largest drop (null when no click raised the score)."
    )


class Explanation(_Strict):
    model_version: int | None = Field(description="Version that scored; null for a fallback.")
    arm: str | None = Field(description="Experiment arm that answered.")
    fallback_reason: (
        Literal["popularity_arm", "no_model", "unknown_session", "no_known_item"] | None
    ) = Field(description="Why popular items answered; null when the model ranked.")
    attribution: Literal["leave_one_out"] = Field(description="How event_drops are computed.")
    events: list[ExplainedEvent] = Field(description="The session's clicks, oldest first.")
    items: list[ExplainedItem] = Field(description="One per item of the answer, same order.")


class RecommendResponse(_Strict):
    request_id: str = Field(description="Unique id; the impression event carries it.")
    session_id: str
    model_version: int | None = Field(description="Version that scored; null for a fallback.")
    arm: str = Field(
        description="Experiment arm that answered (online, popularity, canary, pinned-<N>); "
        "the impression carries it."
    )
    explored: list[int] = Field(
        description="Positions in items filled by an exploration slot (new items), not ranked."
    )
    fallback: Literal["popular"] | None = Field(
        description="Set when the session is unknown or empty and popular items are shown."
    )
    items: list[RecommendedItem] = Field(description="Best first; at most k.")
    explanation: Explanation | None = Field(
        None, description="Only with explain=true: why each item is in the answer."
    )


class RecommendBody(_Strict):
    session_id: str = Field(pattern=ID_REGEX)
    k: int = Field(20, ge=1, description="How many items (default and maximum from config).")
    exclude_bought: bool = Field(True, description="Leave out items the session bought.")
    categories: list[str] = Field(
        default_factory=list, max_length=MAX_CATEGORIES, description="Only these categories."
    )
    exclude_items: list[str] = Field(default_factory=list, description="Never return these.")
    explain: bool = Field(False, description="Add the explanation of every item.")


class ErrorResponse(_Strict):
    error: str = Field(description="Stable machine-readable code, e.g. invalid_k.")
    detail: str


class HealthResponse(_Strict):
    status: Literal["ok"]


class ReadyResponse(_Strict):
    ready: bool
    model_loaded: bool
    redis: bool


class FailedVersion(_Strict):
    version: int
    reason: str
    attempts: int = Field(description="Failed loads of this version in a row.")
    next_retry_at: float = Field(
        description="Unix time it is loaded again if it is still the registry's current."
    )


class ArmFollower(_Strict):
    arm: str = Field(description="A pinned-<N> or canary experiment arm.")
    version: int | None = Field(description="Version the arm's follower holds (null: none).")
    wanted_version: int | None = Field(
        description="Version the arm should serve: N, or the registry's canary pointer."
    )
    answers: bool = Field(
        description="The arm answers its sessions (it holds the version it wants)."
    )
    answered_by: str = Field(
        description="The arm answering its sessions now: itself, else the control "
        "(online when the control has no model either)."
    )
    failed_versions: list[FailedVersion]
    pubsub_connected: bool = Field(description="Canary arm: listening to its channel.")


class ModelResponse(_Strict):
    version: int | None
    loaded_at: float | None = Field(description="Unix time the version was swapped in.")
    age_s: float | None = Field(description="Seconds since it was swapped in.")
    source: str | None = Field(description="startup, pubsub or poll: what triggered the load.")
    items: int
    failed_versions: list[FailedVersion] = Field(
        description="Versions that failed to load and never loaded since, newest last."
    )
    pubsub_connected: bool
    worker_index: int = Field(description="The worker process that answered (0-based).")
    arms: list[ArmFollower] = Field(
        description="Followers of the pinned and canary experiment arms (empty without)."
    )


MODELS: tuple[type[BaseModel], ...] = (
    RecommendResponse,
    RecommendBody,
    ErrorResponse,
    HealthResponse,
    ReadyResponse,
    ModelResponse,
)


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
        },
    }


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "Invalid parameter (see error and detail).",
        401: "Missing or wrong bearer token (only when a token is configured).",
        404: "No such route.",
        405: "Method not allowed on this route.",
        413: "Request body larger than the configured limit.",
        415: "Body is not application/json.",
        503: "Redis is unavailable (timeout, connection failed, error reply); see detail.",
    }
    return {str(s): _json(ErrorResponse, meaning[s]) for s in statuses}


def openapi_document(settings: ServingSettings) -> dict[str, Any]:
    """The OpenAPI document for a server with these settings (limits are filled in)."""
    _, definitions = models_json_schema(
        [(model, "serialization") for model in MODELS],
        ref_template="#/components/schemas/{model}",
    )
    schemas = definitions["$defs"]
    schemas["RecommendBody"]["properties"]["k"]["maximum"] = settings.max_k
    schemas["RecommendBody"]["properties"]["k"]["default"] = settings.default_k
    schemas["RecommendBody"]["properties"]["exclude_items"]["maxItems"] = settings.max_exclude_items
    secured = [{"bearer": []}] if settings.auth_token.get_secret_value() else []
    query = [
        _param("session_id", {"type": "string", "pattern": ID_REGEX}, required=True),
        _param("k", {"type": "integer", "minimum": 1, "maximum": settings.max_k}),
        _param("category", {"type": "string", "pattern": ID_REGEX}),
        _param("exclude_bought", {"type": "boolean", "default": True}),
        _param("explain", {"type": "boolean", "default": False}),
    ]
    ok = _json(RecommendResponse, "Top-K items for the session.")
    return {
        "openapi": "3.1.0",
        "info": {"title": "streamrec serving", "version": "1"},
        "paths": {
            "/recommend": {
                "get": {
                    "summary": "Top-K items for a session",
                    "parameters": query,
                    "security": secured,
                    "responses": {"200": ok, **_errors(400, 401, 503)},
                },
                "post": {
                    "summary": "Top-K items for a session, with options",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RecommendBody"}
                            }
                        },
                    },
                    "responses": {"200": ok, **_errors(400, 401, 413, 415, 503)},
                },
            },
            "/healthz": {
                "get": {
                    "summary": "The process is up",
                    "responses": {"200": _json(HealthResponse, "Alive.")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "A model is loaded and Redis answers",
                    "responses": {
                        "200": _json(ReadyResponse, "Ready."),
                        "503": _json(ReadyResponse, "Not ready."),
                    },
                }
            },
            "/model": {
                "get": {
                    "summary": "The serving model (version, loaded at, age, source) and "
                    "the experiment arms' followers",
                    "security": secured,
                    "responses": {
                        "200": _json(ModelResponse, "The model now serving."),
                        **_errors(401),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of this worker",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _param(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}
