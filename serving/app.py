"""The feed API application: `create_app(settings)` wires the services in the lifespan.

Clients (Redis, Kafka producer) and ONNX sessions are created when the app
starts, never at import; background tasks keep item features, popular lists,
the catalog, the experiment config and the model registry fresh, and stop with
the app. Every error leaves as JSON `{"error", "message", "details"?}` with its
status code.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from sdk.clock import wall_clock_ms
from sdk.settings import INTERACTIONS_TOPIC
from serving.api import FeedFastPath, admin, reload_all, router
from serving.deps import Services
from serving.errors import InvalidRequest, MalformedBody, ServingError
from serving.events import KafkaEventSink, MemoryEventSink, make_event_sink
from serving.experiments import Experiments
from serving.items import Catalog, ItemFeatureCache
from serving.metrics import ServingMetrics
from serving.middleware import AuthMiddleware, BodyLimitMiddleware, LoadShedMiddleware, MetricsMiddleware
from serving.models import ModelRegistry
from serving.online_store import (
    InMemoryOnlineStore,
    OnlineStoreError,
    RedisOnlineReader,
    make_online_store,
    served_declared_views,
)
from serving.pipeline import FeedRanker
from serving.settings import KafkaEvents, ServingSettings

log = logging.getLogger("freshrank.serving")

# How long startup waits for the first item-feature and popular-list reads before serving anyway.
STARTUP_READ_TIMEOUT_S = 5.0
# How long shutdown waits for cancelled background tasks to end before it goes on without them.
SHUTDOWN_TASKS_S = 5.0


async def _every(
    interval_s: float, what: str, step: Callable[[], Coroutine[Any, Any, object]], metrics: ServingMetrics
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.background_errors.labels(what).inc()
            log.exception("background %s failed; retrying in %.1f s", what, interval_s)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the background tasks and wait for them, for at most `SHUTDOWN_TASKS_S`.

    A task that ignores its cancel (a library that swallows CancelledError) is logged and left
    behind: shutdown must end so the process exits and the producer's flush still runs.
    """
    for task in tasks:
        task.cancel()
    _, running = await asyncio.wait(tasks, timeout=SHUTDOWN_TASKS_S)
    for task in running:
        log.error("background task %r did not stop within %.0f s of its cancel", task.get_name(), SHUTDOWN_TASKS_S)


async def _refresh_popular(services: Services) -> None:
    try:
        await services.ranker.popular.refresh(services.store)
    except OnlineStoreError as error:
        log.warning("popular lists not refreshed: %s", error)


async def build_services(
    settings: ServingSettings,
    metrics: ServingMetrics,
    store: RedisOnlineReader | InMemoryOnlineStore | None,
    events: KafkaEventSink | MemoryEventSink | None,
    clock_ms: Callable[[], int],
) -> Services:
    if store is None:
        topic = settings.events.topic if isinstance(settings.events, KafkaEvents) else INTERACTIONS_TOPIC
        declared = await asyncio.to_thread(served_declared_views, settings.online_store, topic)
        store = make_online_store(settings.online_store, declared)
    if isinstance(store, RedisOnlineReader):
        await store.open()
    catalog = Catalog(settings.catalog_path)
    await asyncio.to_thread(catalog.reload_if_changed)
    experiments = Experiments(settings.experiments_path)
    # Declared features ("<view>:<feature>") the API can give a model: user ones come with the user row,
    # item ones are held by the item cache beside the ranker's item columns.
    served = [name for view in store.declared for name in view.input_names]
    item_declared = [name for view in store.declared if view.entity_key == "item_id" for name in view.input_names]
    registry = ModelRegistry(settings.model_registry, settings.model_name, served)
    registry.pinned = experiments.config.pinned_versions()
    items = ItemFeatureCache(
        store, catalog, metrics, settings.item_refresh_s, settings.item_cache_max, clock_ms, item_declared
    )
    ranker = FeedRanker(settings, store, items, catalog, registry, experiments, metrics, clock_ms)
    services = Services(
        settings=settings,
        metrics=metrics,
        store=store,
        catalog=catalog,
        items=items,
        registry=registry,
        experiments=experiments,
        ranker=ranker,
        events=events or make_event_sink(settings.events, metrics),
        clock_ms=clock_ms,
    )
    metrics.item_cache_refresh_age.set_function(lambda: items.refresh_age_s() or -1.0)

    def corrupt(kind: str, entity_id: str, reason: str) -> None:
        metrics.corrupt_rows.labels(kind).inc()
        log.warning("corrupt %s row %r skipped: %s", kind, entity_id[:128], reason)

    store.on_corrupt = corrupt
    await reload_all(services)
    # First reads so the first requests have popular lists and item features; a down Redis
    # only delays them (the background tasks retry), it does not stop the API starting.
    await _first_read(_refresh_popular(services), "popular lists", metrics)
    items.popular = ranker.popular.global_list
    await _first_read(items.refresh(), "item features", metrics)
    return services


async def _first_read(read: Coroutine[Any, Any, object], what: str, metrics: ServingMetrics) -> None:
    """A startup read: slow or failing, it only delays the data (the background task retries), never the API."""
    try:
        async with asyncio.timeout(STARTUP_READ_TIMEOUT_S):
            await read
    except TimeoutError:
        log.warning("first read of %s took over %.0f s; serving without it for now", what, STARTUP_READ_TIMEOUT_S)
    except Exception:
        metrics.background_errors.labels(what).inc()
        log.exception("first read of %s failed; serving without it for now", what)


def create_app(
    settings: ServingSettings | None = None,
    *,
    store: RedisOnlineReader | InMemoryOnlineStore | None = None,
    events: KafkaEventSink | MemoryEventSink | None = None,
    clock_ms: Callable[[], int] = wall_clock_ms,
) -> FastAPI:
    """The ASGI app. `store`, `events` and `clock_ms` replace the configured backends (tests)."""
    settings = settings or ServingSettings()
    # A registry per app, not the global one: tests and benchmarks build several apps per process.
    metrics = ServingMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await build_services(settings, metrics, store, events, clock_ms)
        app.state.services = services
        # Everything alive now (imports, model, catalog) lives as long as the process: keep it out of
        # the cyclic collector, whose full passes over it would otherwise pause requests for tens of ms.
        gc.collect()
        gc.freeze()

        async def refresh_popular() -> None:
            await _refresh_popular(services)
            services.items.popular = services.ranker.popular.global_list

        tasks = [
            asyncio.create_task(services.items.run(), name="item features"),
            asyncio.create_task(
                _every(settings.popular_refresh_s, "popular lists", refresh_popular, metrics), name="popular lists"
            ),
            asyncio.create_task(
                _every(settings.model_poll_s, "registry watch", lambda: reload_all(services), metrics),
                name="registry watch",
            ),
        ]
        services.background = tasks
        try:
            yield
        finally:
            await _stop(tasks)
            await services.store.close()
            await asyncio.to_thread(services.events.close)

    app = FastAPI(
        title="freshrank feed API",
        version="1",
        summary="Re-ranks cached candidates with live features and an ONNX ranker; never fails a valid request.",
        lifespan=lifespan,
        # Prometheus is our telemetry; FastAPI's native OpenTelemetry hooks cost time per request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        # A trailing slash is a 404 with a JSON reason, not a redirect clients must follow.
        redirect_slashes=False,
    )
    app.include_router(router)
    app.include_router(admin)

    @app.exception_handler(ServingError)
    async def serving_error(_request: Request, error: ServingError) -> JSONResponse:
        return JSONResponse(error.to_json(), status_code=error.status_code, headers=error.headers())

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, error: Exception) -> JSONResponse:
        # A bug, never bad input or a down dependency (those are 4xx or degraded answers): still JSON.
        log.error("unhandled error: %s: %s", type(error).__name__, error, exc_info=error)
        return JSONResponse(
            {"error": "internal_error", "message": "the server failed on this request; retry"}, status_code=500
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            malformed = MalformedBody("the body is not valid JSON")
            return JSONResponse(malformed.to_json(), status_code=malformed.status_code)
        details = [
            {"field": ".".join(str(part) for part in p.get("loc", ())), "reason": str(p.get("msg", ""))}
            for p in problems
        ]
        first = details[0] if details else {"field": "body", "reason": "invalid"}
        invalid = InvalidRequest(f"{first['field']}: {first['reason']}", details)
        return JSONResponse(invalid.to_json(), status_code=invalid.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse(
            {"error": code, "message": str(error.detail)}, status_code=error.status_code, headers=error.headers
        )

    # Innermost first. Plainly valid feed requests skip FastAPI's routing (FeedFastPath); our own body
    # limit rather than FastAPI's max_body_size (413 in plain text); keys are checked before any body is
    # read; shedding and the deadline wrap everything but the metrics.
    app.add_middleware(FeedFastPath)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, settings=settings)
    app.add_middleware(
        LoadShedMiddleware,
        max_in_flight=settings.max_in_flight,
        timeout_s=settings.request_timeout_s,
        metrics=metrics,
    )
    if settings.origins():
        # Browser SDK (sdk/js): pages of these origins POST events with an X-API-Key header. Outside
        # the key check, so a preflight (which carries no key) is answered here.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.origins(),
            allow_methods=["POST"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization"],
            max_age=600,
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
