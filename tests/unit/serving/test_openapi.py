"""The OpenAPI document describes exactly the routes the app serves."""

from __future__ import annotations

from pydantic import SecretStr
from starlette.routing import Route

from serving.app import create_app
from serving.openapi import openapi_document
from streamrec.settings import RedisSettings, ServingSettings, Settings
from tests.unit.serving.test_hot_swap import ITEMS, FakeRegistry, FakeScorer


class NullProducer:
    def produce(self, *args: object, **kwargs: object) -> None: ...

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0


def build(token: str = "") -> object:
    settings = Settings(
        serving=ServingSettings(auth_token=SecretStr(token)),
        redis=RedisSettings(key_prefix="unit-openapi"),
    )
    return create_app(
        settings,
        registry=FakeRegistry(current=1),
        build_scorer=lambda weights, previous: FakeScorer(weights.version, ITEMS),
        producer=NullProducer(),  # type: ignore[arg-type]
    )


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    app = build()
    served = {
        (route.path, method.lower())
        for route in app.routes  # type: ignore[attr-defined]
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    document = openapi_document(ServingSettings())
    documented = {
        (path, method) for path, operations in document["paths"].items() for method in operations
    }
    assert served == documented


def test_every_schema_reference_resolves() -> None:
    document = openapi_document(ServingSettings())
    schemas = document["components"]["schemas"]
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas


def test_limits_and_security_follow_the_settings() -> None:
    plain = openapi_document(ServingSettings(max_k=7))
    body = plain["components"]["schemas"]["RecommendBody"]["properties"]
    assert body["k"]["maximum"] == 7
    assert plain["paths"]["/recommend"]["get"]["security"] == []
    secured = openapi_document(ServingSettings(auth_token=SecretStr("t")))
    assert secured["paths"]["/recommend"]["get"]["security"] == [{"bearer": []}]
    assert "/healthz" in secured["paths"] and "security" not in secured["paths"]["/healthz"]["get"]
