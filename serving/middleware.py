"""Plain ASGI middleware: load shedding and the request deadline, API keys, the body-size limit, metrics.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: no extra task per
request, which matters at a few milliseconds per request. Every refusal here
is the API's JSON error body with its status code.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.deps import admin_disabled, check_key, given_key
from serving.errors import Overloaded, PayloadTooLarge, RequestTimeout, ServingError
from serving.metrics import ServingMetrics
from serving.settings import ServingSettings

OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


async def send_error(send: Send, status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


async def send_serving_error(send: Send, error: ServingError, headers: dict[str, str] | None = None) -> None:
    await send_error(send, error.status_code, error.to_json(), {**error.headers(), **(headers or {})})


class BodyLimitMiddleware:
    """413 for a body longer than `max_bytes`, by Content-Length or by counting a chunked stream.

    The body is read here, whole, before the app sees it: a chunked body over the limit is refused
    with 413 before any parsing (FastAPI would turn an error raised mid-read into a 400).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        error = PayloadTooLarge(f"the request body is larger than the limit of {self.max_bytes} bytes")
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = False
                if too_large:
                    await send_serving_error(send, error, {"connection": "close"})
                    return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await send_serving_error(send, error, {"connection": "close"})
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class AuthMiddleware:
    """Checks the API key of /v1/events and /v1/admin/* from the headers alone, before the body is read.

    An unauthenticated client therefore cannot make the API read or parse a body. The routes'
    dependencies check again (and document the headers in OpenAPI).
    """

    def __init__(self, app: ASGIApp, settings: ServingSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            keys: list[str] | None = None
            if path.startswith("/v1/admin/"):
                keys = self.settings.admin_key_list()
                if not keys:
                    await send_serving_error(send, admin_disabled())
                    return
            elif path == "/v1/events":
                keys = self.settings.keys()
            if keys is not None:
                headers = dict(scope.get("headers", ()))
                authorization, x_api_key = headers.get(b"authorization"), headers.get(b"x-api-key")
                try:
                    check_key(
                        given_key(
                            authorization.decode("latin-1") if authorization is not None else None,
                            x_api_key.decode("latin-1") if x_api_key is not None else None,
                        ),
                        keys,
                    )
                except ServingError as error:
                    await send_serving_error(send, error)
                    return
        await self.app(scope, receive, send)


class LoadShedMiddleware:
    """At most `max_in_flight` requests at once (503 `overloaded` beyond), each bounded by `timeout_s` (504).

    A worker past its capacity answers at once with Retry-After instead of queueing requests whose
    clients will have given up; ops endpoints (/healthz, /readyz, /metrics) are never shed.
    """

    def __init__(self, app: ASGIApp, max_in_flight: int, timeout_s: float, metrics: ServingMetrics) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.in_flight = 0
        metrics.in_flight.set_function(lambda: self.in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPS_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            self.metrics.shed.labels("overloaded").inc()
            await send_serving_error(
                send, Overloaded(f"more than {self.max_in_flight} requests in progress in this worker; retry", 1.0)
            )
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        self.in_flight += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            self.metrics.shed.labels("timeout").inc()
            if started:
                raise
            await send_serving_error(
                send, RequestTimeout(f"the request took longer than {self.timeout_s:g} s; it was abandoned")
            )
        finally:
            self.in_flight -= 1


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (not raw path: user ids would explode labels)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, str(status)).inc()
            self.metrics.request_seconds.labels(template).observe(time.perf_counter() - started)
