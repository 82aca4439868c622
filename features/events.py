"""The interaction event: the one record every part of freshrank agrees on.

This module defines the event as a frozen dataclass and the validation rules
that decide whether an event may enter the system. It must never do I/O:
the clock is a parameter, so the same rules run in the SDK, the HTTP
collector and the stream job with identical results.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

MAX_ID_LENGTH = 128
MAX_TAG_LENGTH = 64
# 24 hours: a longer single watch is a client bug, not a user.
MAX_WATCH_MS = 24 * 3600 * 1000
MAX_POSITION = 10_000
# Events older than this are absurd for a live feed (clients buffer offline
# for days at most); 2020-01-01T00:00:00Z.
MIN_EVENT_TIME_MS = 1_577_836_800_000
# Client clocks drift; more than this into the future is a broken clock.
MAX_CLOCK_SKEW_MS = 3600 * 1000

_COUNTRY = re.compile(r"^[A-Z]{2}$")


class EventType(StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"
    VIEW = "view"
    LIKE = "like"
    SHARE = "share"
    SKIP = "skip"
    COMPLETE = "complete"


@dataclass(frozen=True, slots=True)
class InteractionEvent:
    event_id: str
    user_id: str
    item_id: str
    event_type: EventType
    event_time_ms: int
    watch_ms: int | None = None
    request_id: str | None = None
    position: int | None = None
    variant: str | None = None
    device: str | None = None
    country: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event was refused: the field at fault and a reason a person can act on."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def excerpt(value: object, limit: int = 40) -> str:
    """repr of a refused value, cut: a reason quotes at most a few characters of a client's data."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def validate(event: InteractionEvent, now_ms: int) -> Rejection | None:
    """Return the first rule the event breaks, or None if it may enter.

    `now_ms` is the validator's clock (wall time in the SDK and collector,
    processing time in the stream job), used only to refuse far-future events.
    """
    for name in ("event_id", "user_id", "item_id"):
        value = getattr(event, name)
        if not isinstance(value, str) or not value.strip():
            return Rejection(name, "is required and must be a non-empty string")
        if len(value) > MAX_ID_LENGTH:
            return Rejection(name, f"is {len(value)} characters long, the limit is {MAX_ID_LENGTH}")
    if not isinstance(event.event_type, EventType):
        allowed = ", ".join(t.value for t in EventType)
        return Rejection("event_type", f"{excerpt(event.event_type)} is not one of: {allowed}")
    if isinstance(event.event_time_ms, bool) or not isinstance(event.event_time_ms, int):
        return Rejection("event_time", "must be an integer timestamp in milliseconds")
    if event.event_time_ms < MIN_EVENT_TIME_MS:
        return Rejection("event_time", f"{event.event_time_ms} ms is before 2020-01-01, the oldest accepted")
    if event.event_time_ms > now_ms + MAX_CLOCK_SKEW_MS:
        ahead_s = (event.event_time_ms - now_ms) // 1000
        return Rejection(
            "event_time",
            f"is {ahead_s} s in the future; at most {MAX_CLOCK_SKEW_MS // 1000} s of clock skew is accepted",
        )
    if event.watch_ms is not None and not 0 <= event.watch_ms <= MAX_WATCH_MS:
        return Rejection("watch_ms", f"{event.watch_ms} is outside 0..{MAX_WATCH_MS}")
    if event.position is not None and not 0 <= event.position <= MAX_POSITION:
        return Rejection("position", f"{event.position} is outside 0..{MAX_POSITION}")
    for name in ("request_id", "variant", "device"):
        value = getattr(event, name)
        limit = MAX_ID_LENGTH if name == "request_id" else MAX_TAG_LENGTH
        if value is not None and (not value or len(value) > limit):
            return Rejection(name, f"must be null or 1..{limit} characters")
    if event.country is not None and not _COUNTRY.match(event.country):
        return Rejection("country", f"{excerpt(event.country)} is not an ISO 3166-1 alpha-2 code like 'US'")
    return None


def point_in_time(
    events: Iterable[InteractionEvent], as_of_ms: int, entity: Callable[[InteractionEvent], str], kind: str
) -> Iterator[InteractionEvent]:
    """One entity's events known at `as_of_ms`, each event_id once (first occurrence wins), in log order.

    Raises ValueError if the events belong to more than one entity (`entity` picks the id, `kind`
    names them in the message, e.g. "users").
    """
    seen: set[str] = set()
    owner: str | None = None
    for event in events:
        key = entity(event)
        if owner is None:
            owner = key
        elif key != owner:
            raise ValueError(f"replay got events of two {kind}, {owner!r} and {key!r}; give it one's events")
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        if event.event_time_ms <= as_of_ms:
            yield event
