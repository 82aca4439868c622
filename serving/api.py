"""Routes of the feed API. Thin: parse, check limits, call a service, shape the response."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.deps import AdminKey, ApiKey, Services, ServicesDep, check_api_key
from serving.errors import EventsRejected, EventsUnavailable, InvalidRequest, MalformedBody
from serving.events import Published, judge
from serving.pipeline import RankQuery, RankResult
from serving.schemas import (
    ErrorResponse,
    EventRejection,
    EventsRequest,
    EventsResponse,
    ExperimentStatus,
    ModelStatus,
    RankRequest,
    RankResponse,
    ReadyStatus,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not JSON."},
    413: {"model": ErrorResponse, "description": "The body is larger than the limit."},
    422: {"model": ErrorResponse, "description": "The request breaks the schema or a limit; details name the field."},
}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or unknown API key."}
}

router = APIRouter()
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    403: {"model": ErrorResponse, "description": "Admin endpoints disabled (no FRESHRANK_SERVE_ADMIN_KEYS)."},
}
admin = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[AdminKey], responses=ADMIN_ERRORS)


def _check_k(k: int | None, services: Services) -> int:
    settings = services.settings
    if k is None:
        return settings.default_k
    if k > settings.max_k:
        raise InvalidRequest(
            f"k is {k}; at most {settings.max_k} items can be asked for",
            [{"field": "k", "reason": f"must be <= {settings.max_k}"}],
        )
    return k


def answer_body(result: RankResult) -> bytes:
    """The `RankResponse` JSON, written directly: FastAPI would re-validate the model and walk it with
    jsonable_encoder on every answer, for a body our own code just built. `RankResponse` stays the route's
    documented model; a test checks each answer validates against it. orjson writes it in ~6 us (json:
    ~45 us); it spells some floats differently (0.00007 for 7e-05), the same numbers."""
    model = (
        {"name": result.model_name, "version": result.model_version}
        if result.model_name is not None and result.model_version is not None
        else None
    )
    body = {
        "request_id": result.request_id,
        "user_id": result.user_id,
        "arm": result.arm,
        "model": model,
        "candidate_source": result.candidate_source,
        "items": [
            {"item_id": i.item_id, "score": i.score, "position": i.position, "explored": i.explored}
            for i in result.items
        ],
        "degraded": result.degraded,
    }
    return orjson.dumps(body)


def _response(result: RankResult) -> Response:
    return Response(answer_body(result), media_type="application/json")


@router.post("/v1/rank", response_model=RankResponse, responses=ERRORS, tags=["feed"])
async def rank(body: RankRequest, services: ServicesDep) -> Response:
    """Re-rank the given candidates (or the user's cached list) for the user with live features.

    Always answers 200 for a valid request: missing features, model or candidates are
    named in `degraded` instead of failing the request.
    """
    k = _check_k(body.k, services)
    if body.candidates is not None and len(body.candidates) > services.settings.max_candidates:
        limit = services.settings.max_candidates
        raise InvalidRequest(
            f"{len(body.candidates)} candidates sent; at most {limit} are ranked per request",
            [{"field": "candidates", "reason": f"must have at most {limit} items"}],
        )
    context = body.context
    query = RankQuery(
        user_id=body.user_id,
        k=k,
        candidates=body.candidates,
        country=context.country if context else None,
        device=context.device if context else None,
    )
    return _response(await services.ranker.rank(query))


FEED_ROUTE = "/v1/feed/{user_id}"
USER_ID_MAX_LENGTH = 128


@router.get(FEED_ROUTE, response_model=RankResponse, responses=ERRORS, tags=["feed"])
async def feed(
    user_id: Annotated[str, Path(min_length=1, max_length=USER_ID_MAX_LENGTH)],
    services: ServicesDep,
    k: Annotated[int | None, Query(ge=1)] = None,
    country: Annotated[str | None, Query(pattern=r"^[A-Z]{2}$")] = None,
) -> Response:
    """The user's feed: their cached candidates (or a fallback list) ranked with live features."""
    if not user_id.strip():
        raise InvalidRequest("user_id must not be blank", [{"field": "user_id", "reason": "must not be blank"}])
    query = RankQuery(user_id=user_id, k=_check_k(k, services), country=country)
    return _response(await services.ranker.rank(query))


_FEED_PREFIX = FEED_ROUTE.removesuffix("{user_id}")
# The route FeedFastPath stands in for: metrics label requests by its template.
_FEED_ROUTE_OBJECT = next(route for route in router.routes if getattr(route, "path", None) == FEED_ROUTE)
_JSON_HEADERS = (b"content-type", b"application/json")


def plain_feed_query(user_id: str, query_string: bytes, default_k: int, max_k: int) -> RankQuery | None:
    """The feed route's query when the request is plainly valid, else None (the FastAPI route decides).

    Plainly valid: a user id of 1-128 characters, not blank, without "/"; a query string of at most one
    `k` (digits, no leading zero, 1..max_k) and one `country` (two letters A-Z), nothing else and no escapes.
    Everything it returns the route would accept with the same values; anything else gets None.
    """
    if not 0 < len(user_id) <= USER_ID_MAX_LENGTH or "/" in user_id or not user_id.strip():
        return None
    k, country = default_k, None
    if query_string:
        if b"%" in query_string or b"+" in query_string:
            return None
        names: set[bytes] = set()
        for part in query_string.split(b"&"):
            name, _, value = part.partition(b"=")
            if name in names:
                return None
            names.add(name)
            if name == b"k" and value.isdigit() and len(value) <= 6 and not value.startswith(b"0"):
                k = int(value)
            elif name == b"country" and len(value) == 2 and value.isalpha() and value.isupper():
                country = value.decode()
            else:
                return None
        if k > max_k:
            return None
    return RankQuery(user_id=user_id, k=k, country=country)


class FeedFastPath:
    """GET /v1/feed/{user_id} for plainly valid requests, without FastAPI's routing and parameter solving.

    FastAPI's router, its dependency and parameter solving, the exception and exit-stack layers and the
    `Response` object were ~5 % of a feed request's instructions (callgrind, in process: 8.46 -> 8.00 M)
    for a route with two query parameters. Requests `plain_feed_query` accepts are answered here with
    the same ranker and the same body; every other request (an error to report, an unusual query, a
    root path) goes on to the FastAPI route, which stays the reference: its validation, its errors, its
    OpenAPI entry. Sits inside the API's own middleware (metrics, shedding, deadline), which see the
    route's template as for any request; an exception reaches the app's 500 handler as from the route.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            path: str = scope["path"]
            if path.startswith(_FEED_PREFIX):
                services: Services = scope["app"].state.services
                settings = services.settings
                query = plain_feed_query(
                    path[len(_FEED_PREFIX) :], scope["query_string"], settings.default_k, settings.max_k
                )
                if query is not None:
                    scope["route"] = _FEED_ROUTE_OBJECT
                    body = answer_body(await services.ranker.rank(query))
                    headers = [_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)


@router.post(
    "/v1/events",
    response_model=EventsResponse,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **ERRORS,
        **AUTH_ERRORS,
        503: {"model": ErrorResponse, "description": "No event reached Kafka (queue full, broker away)."},
    },
    dependencies=[ApiKey],
    tags=["events"],
)
async def events(body: EventsRequest, services: ServicesDep) -> EventsResponse:
    """Put a batch of interaction events on Kafka; each event is accepted or rejected with a reason.

    An event counts as accepted once the broker acknowledged it, so nothing accepted is lost if this pod
    dies. 202 when at least one event was accepted (or the batch was empty); 422 `events_rejected` with the
    same per-event list when every event broke the contract; 503 `events_unavailable` (Retry-After, the
    per-event reasons in `rejected`) when valid events could not reach Kafka: resend those.
    """
    return await _accept_events(body, services)


@router.post(
    "/v1/events/beacon",
    response_model=EventsResponse,
    status_code=status.HTTP_202_ACCEPTED,
    responses={**ERRORS, **AUTH_ERRORS, 503: {"model": ErrorResponse, "description": "Producer queue full."}},
    tags=["events"],
)
async def events_beacon(
    request: Request,
    services: ServicesDep,
    key: Annotated[str, Query(description="The API key: a beacon cannot send headers.")],
) -> EventsResponse:
    """`navigator.sendBeacon` on page hide: the same JSON body as POST /v1/events, sent as text/plain.

    A beacon can set neither headers nor a JSON content type (text/plain is the one type
    a cross-origin beacon may carry without a preflight), so the key is in the query.
    """
    check_api_key(key, services)
    try:
        raw = json.loads(await request.body())
    except ValueError:
        raise MalformedBody("the body is not valid JSON") from None
    try:
        body = EventsRequest.model_validate(raw)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidRequest(f"{field}: {first['msg']}", [{"field": field, "reason": first["msg"]}]) from None
    return await _accept_events(body, services)


async def _accept_events(body: EventsRequest, services: Services) -> EventsResponse:
    limit = services.settings.max_events_per_batch
    if len(body.events) > limit:
        raise InvalidRequest(
            f"{len(body.events)} events sent; at most {limit} per request",
            [{"field": "events", "reason": f"must have at most {limit} items"}],
        )
    accepted, rejected = judge(body.events, services.clock_ms())
    published = await services.events.publish(accepted) if accepted else Published([])
    taken = published.acknowledged
    verdicts = [EventRejection(index=v.index, event_id=v.event_id, field=v.field, reason=v.reason) for v in rejected]
    if taken < len(accepted):
        # Name exactly which events to resend (queue full, broker away, producer failed).
        index_of = _accepted_indexes(len(body.events), rejected)
        for offset, (event, outcome) in enumerate(zip(accepted, published.outcomes, strict=True)):
            if outcome is not None:
                verdicts.append(
                    EventRejection(index=index_of[offset], event_id=event.event_id, field="event", reason=outcome)
                )
        verdicts.sort(key=lambda v: v.index)
    metrics = services.metrics.events
    metrics.labels("accepted").inc(taken)
    metrics.labels("rejected").inc(len(verdicts))
    if accepted and taken == 0 and not rejected:
        # Nothing of a valid batch reached Kafka: a retryable 503 naming each event, not a 422.
        raise EventsUnavailable(
            "no event reached Kafka; retry the batch", published.retry_after_s, [v.model_dump() for v in verdicts]
        )
    if body.events and taken == 0:
        raise EventsRejected([v.model_dump() for v in verdicts])
    return EventsResponse(accepted=taken, rejected=verdicts)


def _accepted_indexes(total: int, rejected: list[Any]) -> list[int]:
    """Request positions of the accepted events, in order."""
    refused = {v.index for v in rejected}
    return [index for index in range(total) if index not in refused]


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadyStatus,
    tags=["ops"],
    responses={503: {"model": ReadyStatus, "description": "No model is loaded yet, or a background task stopped."}},
)
async def readyz(services: ServicesDep, response: Response) -> ReadyStatus:
    """Ready once a model is loaded and while every background refresh runs.

    Redis being down does not make it unready (answers degrade instead); a refresh task that ended
    does, since the pod would otherwise serve stale item features for ever.
    """
    try:
        async with asyncio.timeout(0.2):
            store_ok = await services.store.ping()
    except TimeoutError:
        store_ok = False
    latest = services.registry.models.latest
    stopped = services.stopped_tasks()
    ready = latest is not None and not stopped
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ReadyStatus(
        ready=ready,
        model_version=latest.version if latest else None,
        online_store=store_ok,
        item_cache_items=len(services.items.snapshot.index),
        item_cache_age_s=services.items.refresh_age_s(),
        item_cache_error=services.items.last_error,
        stopped_tasks=stopped,
        catalog_items=len(services.catalog),
    )


@router.get("/metrics", tags=["ops"], response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def model_status(services: Services) -> ModelStatus:
    registry = services.registry
    models = registry.models
    latest = models.latest
    arms = [
        {
            "name": arm.name,
            "weight": arm.weight,
            "model_version": arm.model_version,
            "serving_version": (m.version if (m := models.get(arm.pinned_version) or latest) else None),
        }
        for arm in services.experiments.config.arms
    ]
    return ModelStatus(
        name=registry.name,
        serving_version=latest.version if latest else None,
        loaded_versions=sorted(models.by_version),
        refused=dict(registry.refused),
        arms=arms,
        metadata=latest.metadata if latest else None,
    )


@admin.get("/models", response_model=ModelStatus)
async def get_models(services: ServicesDep) -> ModelStatus:
    """Loaded and refused model versions, and which version each A/B arm serves."""
    return model_status(services)


@admin.post("/reload", response_model=ModelStatus)
async def reload(services: ServicesDep) -> ModelStatus:
    """Re-read experiments, catalog and model registry now, then refresh item features and popular lists."""
    await reload_all(services)
    await services.items.refresh()
    try:
        await services.ranker.popular.refresh(services.store)
    except Exception:  # the store may be down; the lists keep their previous content
        pass
    return model_status(services)


async def reload_all(services: Services) -> None:
    experiments = services.experiments
    if experiments.reload_if_changed():
        services.registry.pinned = experiments.config.pinned_versions()
    await asyncio.to_thread(services.catalog.reload_if_changed)
    report = await asyncio.to_thread(services.registry.scan)
    services.metrics.model_loads.labels("loaded").inc(len(report.loaded))
    services.metrics.model_loads.labels("refused").inc(len(report.refused_now))
    models = services.registry.models
    for arm in experiments.config.arms:
        serving = models.get(arm.pinned_version) or models.latest
        services.metrics.model_version.labels(arm.name).set(serving.version if serving else -1)


@admin.get("/experiments", response_model=ExperimentStatus)
async def get_experiments(services: ServicesDep) -> ExperimentStatus:
    """The A/B config in force and the last reload error, if any."""
    experiments = services.experiments
    return ExperimentStatus(
        config=experiments.config.model_dump(mode="json"),
        path=str(experiments.path) if experiments.path else None,
        error=experiments.error,
    )
