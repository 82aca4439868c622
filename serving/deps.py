"""Typed dependencies of the routes: the services built in the lifespan, and API-key auth.

Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a
thread pool, a thread hop per request that costs more than the dependency itself.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, Request

from serving.errors import Forbidden, Unauthorized
from serving.events import KafkaEventSink, MemoryEventSink
from serving.experiments import Experiments
from serving.items import Catalog, ItemFeatureCache
from serving.metrics import ServingMetrics
from serving.models import ModelRegistry
from serving.online_store import InMemoryOnlineStore, RedisOnlineReader
from serving.pipeline import FeedRanker
from serving.settings import ServingSettings


@dataclass
class Services:
    """Everything a request may use; created once per process in the app's lifespan."""

    settings: ServingSettings
    metrics: ServingMetrics
    store: RedisOnlineReader | InMemoryOnlineStore
    catalog: Catalog
    items: ItemFeatureCache
    registry: ModelRegistry
    experiments: Experiments
    ranker: FeedRanker
    events: KafkaEventSink | MemoryEventSink
    clock_ms: Callable[[], int]
    background: list[asyncio.Task[None]] = field(default_factory=list)
    """The refresh and watch tasks; each should run for the app's lifetime (`/readyz` checks)."""

    def stopped_tasks(self) -> list[str]:
        """Background tasks that ended (they must not): their name and why."""
        stopped = []
        for task in self.background:
            if not task.done():
                continue
            error = None if task.cancelled() else task.exception()
            stopped.append(f"{task.get_name()}: {type(error).__name__}: {error}" if error else task.get_name())
        return stopped


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def given_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key is not None:
        return x_api_key
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return None


def check_key(given: str | None, keys: list[str]) -> None:
    """Unauthorized unless `given` is one of `keys`."""
    if not given:
        raise Unauthorized("this endpoint needs an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")
    # Compare against every key in constant time: no early exit that leaks which prefix matched.
    matches = [hmac.compare_digest(given.encode(), key.encode()) for key in keys]
    if not any(matches):
        raise Unauthorized("the API key is not valid")


def check_api_key(given: str, services: Services) -> None:
    """Unauthorized unless `given` is an ingest key (FRESHRANK_SERVE_API_KEYS): the beacon's query key."""
    check_key(given, services.settings.keys())


def admin_disabled() -> Forbidden:
    return Forbidden("the admin endpoints are disabled: set FRESHRANK_SERVE_ADMIN_KEYS to enable them")


async def require_api_key(
    services: ServicesDep,
    authorization: Annotated[str | None, Header(description="Bearer <ingest key>")] = None,
    x_api_key: Annotated[str | None, Header(description="The ingest key (alternative to Authorization)")] = None,
) -> None:
    """Accept `Authorization: Bearer <key>` or `X-API-Key: <key>` with a key from FRESHRANK_SERVE_API_KEYS."""
    check_key(given_key(authorization, x_api_key), services.settings.keys())


async def require_admin_key(
    services: ServicesDep,
    authorization: Annotated[str | None, Header(description="Bearer <admin key>")] = None,
    x_api_key: Annotated[str | None, Header(description="The admin key (alternative to Authorization)")] = None,
) -> None:
    """Accept a key from FRESHRANK_SERVE_ADMIN_KEYS; with none configured the admin endpoints are off (403)."""
    keys = services.settings.admin_key_list()
    if not keys:
        raise admin_disabled()
    check_key(given_key(authorization, x_api_key), keys)


ApiKey = Depends(require_api_key)
AdminKey = Depends(require_admin_key)
