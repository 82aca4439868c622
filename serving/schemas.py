"""Request and response bodies of the feed API (separate classes: what comes in is never what goes out).

Request models forbid unknown fields, so a typo (`candidate` for `candidates`)
is a 422 naming the field instead of a silently ignored option. Limits that
depend on settings (max candidates, max k, max batch) are checked in the routes.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class RankContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    country: str | None = Field(None, pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2, e.g. US.")
    device: str | None = Field(None, min_length=1, max_length=64)


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128)
    candidates: list[ItemId] | None = Field(
        None, description="Items to rank, best guess first; omitted: the user's cached list or a fallback."
    )
    k: int | None = Field(None, ge=1, description="How many items to return (default and maximum in settings).")
    context: RankContext | None = None

    _blank = field_validator("user_id")(_not_blank)


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Any] = Field(
        description="Interaction events (see EventIn in the docs); each is accepted or rejected on its own."
    )


class ModelRef(BaseModel):
    name: str
    version: int


class RankedItemOut(BaseModel):
    item_id: str
    score: float = Field(description="The model's engagement probability (or the fallback score).")
    position: int = Field(description="0-based slot in the returned list.")
    explored: bool = Field(description="Placed by an exploration slot rather than by score.")


class RankResponse(BaseModel):
    request_id: str = Field(description="Send it back with the events this feed causes.")
    user_id: str
    arm: str = Field(description="A/B arm of the user; send it back as the events' variant.")
    model: ModelRef | None = Field(description="The model that scored; null when no model was available.")
    candidate_source: str = Field(
        description="request, user, popular_country, popular_global, catalog or none (no candidates at all)."
    )
    items: list[RankedItemOut]
    degraded: list[str] = Field(
        description="Fallbacks that fired, as stage:reason (e.g. user_features:deadline, model:missing); "
        "empty when the answer is complete."
    )


class EventRejection(BaseModel):
    index: int = Field(description="Position of the event in the request's list.")
    event_id: str | None
    field: str
    reason: str


class EventsResponse(BaseModel):
    accepted: int
    rejected: list[EventRejection]


class ErrorResponse(BaseModel):
    error: str
    message: str
    details: list[dict[str, Any]] | None = None


class ModelStatus(BaseModel):
    name: str
    serving_version: int | None
    loaded_versions: list[int]
    refused: dict[int, str]
    arms: list[dict[str, Any]]
    metadata: dict[str, Any] | None


class ExperimentStatus(BaseModel):
    config: dict[str, Any]
    path: str | None
    error: str | None


class ReadyStatus(BaseModel):
    ready: bool
    model_version: int | None
    online_store: bool
    item_cache_items: int
    item_cache_age_s: float | None
    item_cache_error: str | None = None
    """The last item-feature read error, if the last attempt failed."""
    stopped_tasks: list[str] = []
    """Background tasks that ended (refresh, watchers): the pod is then not ready."""
    catalog_items: int
