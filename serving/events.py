"""The HTTP event collector behind POST /v1/events: JSON events in, per-event verdicts out, Kafka behind.

Each event of a batch is judged on its own: first its JSON shape (`EventIn`), then
the shared contract (`features.events.validate`, the rules the SDK and the stream
job apply), so a client learns for each rejected event the field and the reason,
and the good events of the batch still go through. Accepted events are handed
to the SDK's `EventPublisher` (idempotent producer, key = user_id; Avro with the id of the
Confluent schema registry at FRESHRANK_SCHEMA_REGISTRY_URL when one is set, 503 with the
reason while that registry cannot be asked); delivery is
asynchronous and counted in `freshrank_serve_events_total{outcome=delivered|failed}`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from confluent_kafka import KafkaError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from features.events import EventType, InteractionEvent, Rejection, validate
from sdk.errors import PublisherBackpressure, SDKError
from sdk.publisher import EventPublisher
from sdk.schema_registry import SchemaRegistryRefused, SchemaRegistryUnavailable
from sdk.settings import KafkaSettings
from serving.errors import EventsUnavailable
from serving.metrics import ServingMetrics
from serving.settings import KafkaEvents, MemoryEvents

log = logging.getLogger("freshrank.serving.events")


class EventIn(BaseModel):
    """One interaction event as JSON. `event_time` is epoch milliseconds or an RFC 3339 time with an offset."""

    model_config = ConfigDict(extra="forbid", strict=False)

    event_id: str
    user_id: str
    item_id: str
    event_type: str = Field(description="impression, click, view, like, share, skip or complete")
    event_time: int | datetime
    watch_ms: int | None = None
    request_id: str | None = None
    position: int | None = None
    variant: str | None = None
    device: str | None = None
    country: str | None = None


_EVENT = TypeAdapter(EventIn)


@dataclass(frozen=True, slots=True)
class EventVerdict:
    index: int
    event_id: str | None
    field: str
    reason: str


def parse_event(raw: Any, now_ms: int) -> InteractionEvent | Rejection:
    """An event that may enter, or the first rule it breaks."""
    try:
        event = _EVENT.validate_python(raw)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "event"
        return Rejection(field, first["msg"])
    if isinstance(event.event_time, datetime):
        if event.event_time.tzinfo is None:
            return Rejection("event_time", "must carry a UTC offset (e.g. 2026-11-18T10:00:00Z) or be epoch ms")
        event_time_ms = int(event.event_time.timestamp() * 1000)
    else:
        event_time_ms = event.event_time
    try:
        event_type = EventType(event.event_type)
    except ValueError:
        allowed = ", ".join(t.value for t in EventType)
        return Rejection("event_type", f"{event.event_type!r} is not one of: {allowed}")
    interaction = InteractionEvent(
        event_id=event.event_id,
        user_id=event.user_id,
        item_id=event.item_id,
        event_type=event_type,
        event_time_ms=event_time_ms,
        watch_ms=event.watch_ms,
        request_id=event.request_id,
        position=event.position,
        variant=event.variant,
        device=event.device,
        country=event.country,
    )
    return validate(interaction, now_ms) or interaction


def judge(raw_events: Sequence[Any], now_ms: int) -> tuple[list[InteractionEvent], list[EventVerdict]]:
    accepted: list[InteractionEvent] = []
    rejected: list[EventVerdict] = []
    for index, raw in enumerate(raw_events):
        outcome = parse_event(raw, now_ms)
        if isinstance(outcome, Rejection):
            event_id = raw.get("event_id") if isinstance(raw, dict) else None
            rejected.append(
                EventVerdict(index, event_id if isinstance(event_id, str) else None, outcome.field, outcome.reason)
            )
        else:
            accepted.append(outcome)
    return accepted, rejected


class EventSink(Protocol):
    async def publish(self, events: list[InteractionEvent]) -> int:
        """Hand events over in order; returns how many were taken (fewer when the queue stays full)."""
        ...

    def close(self) -> None: ...


class KafkaEventSink:
    """Accepted events to Kafka through the SDK; one producer per process."""

    def __init__(self, config: KafkaEvents, metrics: ServingMetrics) -> None:
        settings = KafkaSettings(
            bootstrap_servers=config.bootstrap_servers,
            topic=config.topic,
            security_protocol=config.security_protocol,
            sasl_mechanism=config.sasl_mechanism,
            sasl_username=config.sasl_username,
            sasl_password=config.sasl_password,
            queue_full_timeout_s=config.queue_full_timeout_s,
            client_id="freshrank-serve",
        )
        self._metrics = metrics
        self._publisher = EventPublisher(settings, on_delivery=self._delivered)

    def _delivered(self, event: InteractionEvent, error: KafkaError | None) -> None:
        self._metrics.events.labels("delivered" if error is None else "failed").inc()
        if error is not None:
            log.warning("event %s not delivered: %s", event.event_id, error)

    def _publish(self, events: list[InteractionEvent]) -> int:
        for taken, event in enumerate(events):
            try:
                self._publisher.publish(event)
            except PublisherBackpressure:
                return taken
            except SchemaRegistryUnavailable as error:
                if taken:
                    return taken
                raise EventsUnavailable(f"{error}; nothing was accepted, retry", 5.0) from None
            except SchemaRegistryRefused as error:
                if taken:
                    return taken
                raise EventsUnavailable(f"{error}; nothing was accepted", 60.0) from None
        return len(events)

    async def publish(self, events: list[InteractionEvent]) -> int:
        # A full producer queue blocks for up to queue_full_timeout_s: keep it off the event loop.
        return await asyncio.to_thread(self._publish, events)

    def close(self) -> None:
        try:
            self._publisher.close(timeout_s=10)
        except SDKError as error:
            log.error("closing the event publisher: %s", error)


class MemoryEventSink:
    """Keeps accepted events in a list (test double)."""

    def __init__(self) -> None:
        self.events: list[InteractionEvent] = []
        self.capacity: int | None = None

    async def publish(self, events: list[InteractionEvent]) -> int:
        room = len(events) if self.capacity is None else max(0, self.capacity - len(self.events))
        self.events.extend(events[:room])
        return min(room, len(events))

    def close(self) -> None:
        return None


def make_event_sink(config: KafkaEvents | MemoryEvents, metrics: ServingMetrics) -> KafkaEventSink | MemoryEventSink:
    if isinstance(config, KafkaEvents):
        return KafkaEventSink(config, metrics)
    return MemoryEventSink()
