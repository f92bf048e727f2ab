"""The HTTP app: routes, auth, limits and the request path of ``/recommend``.

The app is an explicit Starlette object built by ``create_app`` from settings and the
parts it runs on (registry, scorer factory, Kafka producer), so tests can build it with
fakes and the server builds it once per worker process. Handlers only move data: they
validate (``recommend_request``), read Redis once (HGETALL of the session hash, pipelined
with concurrent requests' reads by ``session_reader``), ask the ``score_batcher`` for the
model's top K, call the pure ``recommender`` functions on the snapshot read once from the
``ModelHolder``, queue the impression and write JSON with orjson. A request with
``explain`` also gets ``serving.explanation``'s account of each item (computed only then).

A request never waits on a model load, on Kafka or on the category map: those happen on
background threads (``hot_swap``, ``impression_log``).
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import redis
from confluent_kafka import Producer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.experiment_arms import (
    CANARY,
    ONLINE,
    POPULARITY,
    ArmAssignment,
    ArmModel,
    ArmRouter,
    CanaryVersion,
    PinnedVersion,
    pinned_version,
)
from serving.explanation import explain_answer, with_events
from serving.exploration import NewItemPool, exploration_rng, explore
from serving.hot_swap import ModelFollower, ModelHolder, ModelSnapshot, Scorer, VersionSource
from serving.impression_log import ImpressionLog
from serving.item_categories import read_item_categories
from serving.metrics import ServingMetrics
from serving.openapi import openapi_document
from serving.recommend_request import (
    RecommendRequest,
    RequestLimits,
    RequestProblem,
    parse_body,
    parse_query,
)
from serving.recommender import (
    Recommendation,
    excluded_ids,
    model_history,
    popular_depth,
    rank_items,
    ranking_filters,
    recommend_popular,
)
from serving.score_batcher import ScoreBatcher
from serving.session_reader import SessionReader
from streamrec.redis_connection import REDIS_ERRORS, connect_redis, connect_redis_async
from streamrec.redis_keys import RedisKeys
from streamrec.session_features import SessionFeatures, decode_session_features
from streamrec.settings import Settings, load_settings
from streamrec.structured_log import configure_logging, log_event
from streamrec.topics import Topics

logger = logging.getLogger(__name__)
JSON = "application/json"
ROUTES = ("/recommend", "/healthz", "/readyz", "/model", "/metrics", "/openapi.json")


class ServingState:
    """Everything one worker process holds: model, Redis clients, impressions, metrics."""

    def __init__(
        self,
        settings: Settings,
        registry: VersionSource,
        build_scorer: Callable[[Any, Scorer | None], Scorer],
        producer: Producer,
    ) -> None:
        serving = settings.serving
        self.settings = settings
        self.keys = RedisKeys(settings.redis.key_prefix)
        self.limits = RequestLimits(serving.max_k, serving.default_k, serving.max_exclude_items)
        # This worker's own registry: /metrics renders it (no start_http_server here).
        self.metrics = ServingMetrics(CollectorRegistry())
        self.holder = ModelHolder()
        self.batcher = ScoreBatcher(
            serving.score_batch_max,
            serving.score_batch_wait_ms / 1000,
            self.metrics.score_batch_size,
        )
        url = settings.redis.redis_url.get_secret_value()
        # A plain pool (12 us cheaper per call than the blocking one): granian's
        # backpressure bounds the requests in a worker, so the pool is never exhausted
        # while redis_max_connections >= backpressure; if it were, the call fails (503).
        # One immediate retry after a timeout: the timeout also fires when this worker's
        # event loop was stalled (CPU starved, a long batch) although Redis had answered.
        self.redis = connect_redis_async(
            url,
            max_connections=serving.redis_max_connections,
            socket_timeout=serving.redis_timeout_s,
            socket_connect_timeout=serving.redis_timeout_s,
            retry=Retry(NoBackoff(), 1),
            retry_on_timeout=True,
        )
        self.sessions = SessionReader(self.redis)
        self.sync_redis = connect_redis(
            url, socket_timeout=settings.redis.redis_timeout_s, health_check_interval=10
        )
        self.pubsub_client = connect_redis(
            url,
            socket_timeout=settings.redis.redis_timeout_s,
            socket_connect_timeout=settings.redis.redis_timeout_s,
            health_check_interval=10,
        )
        self.build_scorer = build_scorer
        self.follower = self._follower(self.holder, registry, self.keys.model_updates)
        self.arm_followers: dict[str, ModelFollower] = {}
        self.router = self._router(registry)
        # Per-arm counts only when there are arms to compare (an increment costs ~0.5 us);
        # children bound once, so a request only looks its arm up.
        self.arm_counters = (
            {
                arm: (
                    self.metrics.arm_requests.labels(arm),
                    self.metrics.arm_fallbacks.labels(arm),
                )
                for arm in (*settings.experiment.arms, ONLINE)
            }
            if len(settings.experiment.arms) > 1
            else None
        )
        self.new_items: NewItemPool | None = None
        if serving.explore_slots:
            self.new_items = NewItemPool(
                self.sync_redis,
                self.keys,
                self.holder,
                max_shown=serving.explore_max_shown,
                refresh_s=serving.explore_refresh_s,
            )
        self.explore_rng = exploration_rng(serving.explore_seed, serving.worker_index)
        self.impressions = ImpressionLog(
            producer,
            Topics.from_settings(settings.kafka).impressions,
            self.metrics,
            batch_ms=serving.impression_batch_ms,
            batch_size=serving.impression_batch_size,
            queue_max=serving.impression_queue_max,
        )
        token = serving.auth_token.get_secret_value()
        self.expected_token = token.encode()
        self.openapi = orjson.dumps(openapi_document(serving))

    def _follower(
        self,
        holder: ModelHolder,
        source: VersionSource,
        channel: str | None,
        arm: str | None = None,
    ) -> ModelFollower:
        """A follower of ``source`` into ``holder``; ``channel`` None: polling only."""
        serving = self.settings.serving
        return ModelFollower(
            holder,
            source,
            self.build_scorer,
            redis_client=self.pubsub_client if channel is not None else None,
            channel=channel or "",
            poll_interval_s=serving.poll_interval_s,
            category_refresh_s=serving.category_refresh_s,
            read_categories=lambda: read_item_categories(self.sync_redis, self.keys),
            metrics=self.metrics,
            retry_base_s=serving.model_retry_base_s,
            retry_max_s=serving.model_retry_max_s,
            arm=arm,
            swap_cpu_share=serving.swap_cpu_share,
        )

    def _router(self, registry: VersionSource) -> ArmRouter:
        """The experiment's router, with a holder and follower per pinned or canary arm."""
        experiment = self.settings.experiment
        models: dict[str, ArmModel] = {}
        for arm in experiment.arms:
            pinned = pinned_version(arm)
            source: PinnedVersion | CanaryVersion
            if pinned is not None:
                source, channel = PinnedVersion(registry, pinned), None
            elif arm == CANARY:
                source = CanaryVersion(registry)  # type: ignore[arg-type]  # has canary_version
                channel = self.keys.model_canary_updates
            else:
                continue
            models[arm] = ArmModel(ModelHolder(), source)
            self.arm_followers[arm] = self._follower(models[arm].holder, source, channel, arm)
        assignment = ArmAssignment.from_settings(experiment)
        return ArmRouter(assignment, experiment.control, self.holder, models)

    def start(self) -> None:
        self.follower.start()
        for follower in self.arm_followers.values():
            follower.start()
        if self.new_items is not None:
            self.new_items.start()
        self.impressions.start()

    async def stop(self) -> None:
        """Stop following the registry, flush impressions, close Redis connections."""
        grace_s = self.settings.serving.shutdown_grace_s
        self.follower.stop(grace_s)
        for follower in self.arm_followers.values():
            follower.stop(grace_s)
        if self.new_items is not None:
            self.new_items.stop(grace_s)
        undelivered = self.impressions.close(grace_s)
        log_event(logger, "serving_stopped", impressions_undelivered=undelivered)
        await self.redis.aclose()
        self.sync_redis.close()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type=JSON)


def _problem(problem: RequestProblem, headers: dict[str, str] | None = None) -> Response:
    return _json(problem.body(), problem.status, headers)


class RecommendHandlers:
    """The route handlers, bound to one worker's ``ServingState``."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    def _denied(self, request: Request) -> Response | None:
        expected = self.state.expected_token
        if not expected:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return None
        problem = RequestProblem(401, "unauthorized", "a valid bearer token is required")
        return _problem(problem, {"WWW-Authenticate": "Bearer"})

    async def recommend_get(self, request: Request) -> Response:
        denied = self._denied(request)
        if denied is not None:
            return denied
        parsed = parse_query(request.query_params.multi_items(), self.state.limits)
        if isinstance(parsed, RequestProblem):
            return _problem(parsed)
        return await self._answer(parsed)

    async def recommend_post(self, request: Request) -> Response:
        denied = self._denied(request)
        if denied is not None:
            return denied
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != JSON:
            return _problem(RequestProblem(415, "unsupported_media_type", "send application/json"))
        body = await self._read_body(request)
        if isinstance(body, RequestProblem):
            return _problem(body)
        parsed = parse_body(body, self.state.limits)
        if isinstance(parsed, RequestProblem):
            return _problem(parsed)
        return await self._answer(parsed)

    async def _read_body(self, request: Request) -> bytes | RequestProblem:
        """The body, refused as soon as it is known to exceed the limit (header or stream)."""
        limit = self.state.settings.serving.max_body_bytes
        too_large = RequestProblem(413, "body_too_large", f"the body is limited to {limit} bytes")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def _answer(self, request: RecommendRequest) -> Response:
        state = self.state
        started = time.perf_counter()
        # Read once: the whole answer uses this arm's version (None: popular items).
        arm, snapshot = state.router.route(request.session_id)
        batcher = state.batcher
        batcher.begin()
        scoring = True
        try:
            key = state.keys.session(request.session_id)
            try:
                raw = await state.sessions.read(key)
            except redis.ResponseError as exc:
                if not _is_wrong_type(exc):
                    raise
                raw = {}
                self._unreadable("session", "wrong_type", key, request.session_id)
            features = self._features(raw, key, request.session_id)
            history = model_history(snapshot, features)
            if history is not None and snapshot is not None and features is not None:
                scoring = False
                excluded, candidates = ranking_filters(snapshot, features, request)
                rows, scores = await batcher.top_k(
                    snapshot, history, request.k, excluded, candidates
                )
                recommendation = rank_items(snapshot, rows, scores, arm)
            else:
                scoring = False
                batcher.end()
                depth = popular_depth(request, features)
                try:
                    popular = await state.redis.zrevrange(
                        state.keys.popular, 0, depth - 1, withscores=True
                    )
                except redis.ResponseError as exc:
                    if not _is_wrong_type(exc):
                        raise
                    popular = []
                    self._unreadable("popular", "wrong_type", state.keys.popular, None)
                recommendation = recommend_popular(
                    [(item.decode(), score) for item, score in popular],
                    snapshot or state.holder.current,  # its category index filters
                    features,
                    request,
                    arm,
                )
                if arm != POPULARITY:  # that arm answers with popular items by design
                    state.metrics.fallbacks.inc()
                    if state.arm_counters is not None:
                        state.arm_counters[arm][1].inc()
        except (*REDIS_ERRORS, TimeoutError) as exc:
            reason = _outage_reason(exc)
            state.metrics.redis_errors.inc()
            log_event(
                logger, "redis_unavailable", logging.WARNING, reason=reason,
                error=repr(exc)[:200],
            )  # fmt: skip
            problem = RequestProblem(503, "feature_store_unavailable", f"Redis {reason}")
            return _problem(problem, {"Retry-After": "1"})
        finally:
            if scoring:  # failed before asking for scores: stop the batcher waiting for it
                batcher.end()
        if state.new_items is not None:
            recommendation = self._explore(recommendation, request, features, snapshot)
        if state.arm_counters is not None:
            state.arm_counters[arm][0].inc()
        request_id = uuid.uuid4().hex
        if recommendation.item_ids:
            state.impressions.record(
                (
                    request_id,
                    request.session_id,
                    int(time.time() * 1000),
                    recommendation.item_ids,
                    recommendation.model_version,
                    arm,
                    recommendation.explored,
                )
            )
        explanation = None
        if request.explain:  # only on request: it encodes the session once per click
            explanation = explain_answer(recommendation, snapshot, with_events(raw, features))
        response = Response(
            _response_body(request_id, request.session_id, recommendation, explanation),
            media_type=JSON,
        )
        if request.explain:  # on-call's slow path: counted apart, kept out of the latency SLO
            state.metrics.explain_requests.inc()
        else:
            state.metrics.request_seconds.observe(time.perf_counter() - started)
        return response

    def _explore(
        self,
        recommendation: Recommendation,
        request: RecommendRequest,
        features: SessionFeatures | None,
        snapshot: ModelSnapshot | None,
    ) -> Recommendation:
        """The answer with exploration slots, for the configured share of requests."""
        state = self.state
        serving = state.settings.serving
        assert state.new_items is not None
        if state.explore_rng.random() >= serving.explore_share:
            return recommendation
        allowed = None
        if request.categories:
            wanted = set(request.categories)
            categories = snapshot or state.holder.current
            category_of = categories.categories.of_item if categories is not None else {}
            allowed = lambda item: category_of.get(item) in wanted  # noqa: E731
        explored = explore(
            recommendation,
            state.new_items.current,
            slots=serving.explore_slots,
            k=request.k,
            sample=serving.explore_sample,
            excluded=excluded_ids(request, features),
            allowed=allowed,
            rng=state.explore_rng,
        )
        if explored.explored:
            state.metrics.explored_items.inc(len(explored.explored))
        return explored

    def _features(
        self, raw: dict[bytes, bytes], key: str, session_id: str
    ) -> SessionFeatures | None:
        """The session's features; None (popular fallback) when unknown or corrupt."""
        if not raw:
            return None
        try:
            return decode_session_features(raw)
        except ValueError:
            self._unreadable("session", "corrupt", key, session_id)
            return None

    def _unreadable(self, kind: str, reason: str, key: str, session_id: str | None) -> None:
        """Count and log a key read as empty because of bad data (never its content)."""
        self.state.metrics.unreadable_keys.labels(kind, reason).inc()
        log_event(
            logger, "redis_key_unreadable", logging.WARNING, key=kind, reason=reason,
            redis_key=key, session_id=session_id,
        )  # fmt: skip

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        model_loaded = self.state.holder.current is not None
        try:
            redis_ok = bool(await self.state.redis.ping())
        except (*REDIS_ERRORS, TimeoutError):
            redis_ok = False
        ready = model_loaded and redis_ok
        body = {"ready": ready, "model_loaded": model_loaded, "redis": redis_ok}
        return _json(body, 200 if ready else 503)

    async def model(self, request: Request) -> Response:
        denied = self._denied(request)
        if denied is not None:
            return denied
        state = self.state
        snapshot = state.holder.current
        follower = state.follower
        arms = []
        for arm, arm_follower in state.arm_followers.items():
            arm_model = state.router.models[arm]
            held = arm_model.holder.current
            answered_by = state.router.resolve(arm)[0]
            arms.append(
                {
                    "arm": arm,
                    "version": held.version if held else None,
                    "wanted_version": arm_model.source.wanted,
                    "answers": answered_by == arm,
                    "answered_by": answered_by,
                    "failed_versions": _failed_versions(arm_follower),
                    "pubsub_connected": arm_follower.state.pubsub_connected,
                }
            )
        return _json(
            {
                "version": snapshot.version if snapshot else None,
                "loaded_at": snapshot.loaded_at if snapshot else None,
                "age_s": round(time.time() - snapshot.loaded_at, 3) if snapshot else None,
                "source": snapshot.source if snapshot else None,
                "items": len(snapshot.item_rows) if snapshot else 0,
                "failed_versions": _failed_versions(follower),
                "pubsub_connected": follower.state.pubsub_connected,
                "worker_index": state.settings.serving.worker_index,
                "arms": arms,
            }
        )

    async def metrics(self, request: Request) -> Response:
        return Response(
            generate_latest(self.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    async def openapi(self, request: Request) -> Response:
        return Response(self.state.openapi, media_type=JSON)


def _failed_versions(follower: ModelFollower) -> list[dict[str, Any]]:
    """The follower's failed versions as ``/model`` lists them, newest last."""
    return [
        {
            "version": f.version,
            "reason": f.reason,
            "attempts": f.attempts,
            "next_retry_at": round(f.next_retry_at, 3),
        }
        for f in follower.state.failures.values()
    ]


def _is_wrong_type(exc: redis.ResponseError) -> bool:
    """A key holding another type than the command reads: bad data, not an outage."""
    return str(exc).startswith("WRONGTYPE")


def _outage_reason(exc: BaseException) -> str:
    """Why Redis could not answer, in words for the 503 detail and the log."""
    if isinstance(exc, TimeoutError | redis.TimeoutError):
        return "did not answer in time"
    if isinstance(exc, redis.ConnectionError | RedisClusterException):
        return "connection failed"
    if isinstance(exc, redis.ResponseError):
        return f"answered an error ({str(exc).partition(' ')[0][:40]})"
    return f"call failed ({type(exc).__name__})"


def _response_body(
    request_id: str,
    session_id: str,
    recommendation: Recommendation,
    explanation: dict[str, Any] | None = None,
) -> bytes:
    body = {
        "request_id": request_id,
        "session_id": session_id,
        "model_version": recommendation.model_version,
        "arm": recommendation.arm,
        "fallback": recommendation.fallback,
        "explored": recommendation.explored,
        "items": [
            {"item_id": item_id, "score": score}
            for item_id, score in zip(recommendation.item_ids, recommendation.scores, strict=True)
        ],
    }
    if explanation is not None:
        body["explanation"] = explanation
    return orjson.dumps(body)


class RequestCounter:
    """ASGI middleware counting responses by route and status (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                key = (route, message["status"])
                child = self._children.get(key)
                if child is None:
                    child = self.metrics.requests.labels(route, str(message["status"]))
                    self._children[key] = child
                child.inc()
            await send(message)

        await self.app(scope, receive, counting_send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _json({"error": code, "detail": str(exc.detail)}, exc.status_code, exc.headers)


def create_app(
    settings: Settings,
    *,
    registry: VersionSource | None = None,
    build_scorer: Callable[[Any, Scorer | None], Scorer] | None = None,
    producer: Producer | None = None,
) -> Starlette:
    """The serving app for one worker; the defaults are the real registry, model and Kafka."""
    if registry is None or build_scorer is None:
        import torch

        from online_models.model.device import pick_device
        from online_models.model.scorer import SessionScorer
        from online_models.registry.weight_registry import WeightRegistry

        # One scoring thread per worker: workers, not threads, use the cores.
        torch.set_num_threads(settings.model.scorer_threads or 1)
        client = connect_redis(
            settings.redis.redis_url.get_secret_value(),
            socket_timeout=settings.redis.redis_timeout_s,
        )
        registry = registry or WeightRegistry(settings, client)
        device = pick_device(settings.serving.device)

        def session_scorer(weights: Any, previous: Scorer | None) -> Scorer:
            # the scorer serving lends its index and int4 table to the next version's
            earlier = previous if isinstance(previous, SessionScorer) else None
            return SessionScorer.from_weights(weights, settings.model, device, earlier)

        build_scorer = build_scorer or session_scorer
    if producer is None:
        from streamrec.kafka_clients import make_producer

        producer = make_producer(
            settings.kafka, **{"linger.ms": settings.serving.impression_batch_ms}
        )
    state = ServingState(settings, registry, build_scorer, producer)
    handlers = RecommendHandlers(state)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.start()
        log_event(logger, "serving_worker_started")
        yield
        await state.stop()

    app = Starlette(
        routes=[
            Route("/recommend", handlers.recommend_get, methods=["GET"]),
            Route("/recommend", handlers.recommend_post, methods=["POST"]),
            Route("/healthz", handlers.healthz, methods=["GET"]),
            Route("/readyz", handlers.readyz, methods=["GET"]),
            Route("/model", handlers.model, methods=["GET"]),
            Route("/metrics", handlers.metrics, methods=["GET"]),
            Route("/openapi.json", handlers.openapi, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.serving = state
    app.add_middleware(RequestCounter, metrics=state.metrics)
    return app


def app_from_environment() -> Starlette:
    """The factory each server worker calls: settings from the environment, built once."""
    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
