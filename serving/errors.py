"""Errors of the feed API. One root, `ServingError`; every error that reaches HTTP knows its status code.

`to_json()` is the body the API sends: `{"error": <code>, "message": <what to do>}` plus
optional details, so a client always gets a reason it can act on. Failures of
the request path's own dependencies (Redis, the model) are not errors here:
they degrade the answer instead (see `serving.pipeline`).
"""

from __future__ import annotations

from typing import Any


class ServingError(Exception):
    """Root of the feed API's errors."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(ServingError):
    """The request breaks the API's schema or limits; `details` names each offending field."""

    status_code = 422
    code = "invalid_request"


class EventsRejected(ServingError):
    """Every event of a batch broke the contract; `rejected` says which field of which event and why."""

    status_code = 422
    code = "events_rejected"

    def __init__(self, rejected: list[dict[str, Any]]) -> None:
        super().__init__(f"all {len(rejected)} events were rejected; `rejected` gives each one's field and reason")
        self.rejected = rejected

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "accepted": 0, "rejected": self.rejected}


class MalformedBody(ServingError):
    """The body is not JSON at all."""

    status_code = 400
    code = "malformed_body"


class Unauthorized(ServingError):
    """No API key, or one that is not among the keys of this endpoint (ingest or admin)."""

    status_code = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="freshrank"'}


class Forbidden(ServingError):
    """The endpoint is disabled in this deployment (admin endpoints without admin keys)."""

    status_code = 403
    code = "forbidden"


class PayloadTooLarge(ServingError):
    """The body is longer than FRESHRANK_SERVE_MAX_BODY_BYTES."""

    status_code = 413
    code = "payload_too_large"


class NotFound(ServingError):
    status_code = 404
    code = "not_found"


class EventsUnavailable(ServingError):
    """No event of the batch reached Kafka (queue full, broker away, producer failed); retry later."""

    status_code = 503
    code = "events_unavailable"

    def __init__(self, message: str, retry_after_s: float, rejected: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.rejected = rejected or []

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "accepted": 0, "rejected": self.rejected}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after_s)))}


class Overloaded(ServingError):
    """This worker already has FRESHRANK_SERVE_MAX_IN_FLIGHT requests in progress; retry (another pod may answer)."""

    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after_s)))}


class RequestTimeout(ServingError):
    """The request ran past FRESHRANK_SERVE_REQUEST_TIMEOUT_S and was abandoned."""

    status_code = 504
    code = "request_timeout"


class ModelRejected(ServingError):
    """A model version failed validation (features, probe batch); the serving model is unchanged."""

    status_code = 409
    code = "model_rejected"


class ConfigError(ServingError):
    """A config file (experiments) cannot be read; the message says which file and why."""

    status_code = 500
    code = "config_error"
