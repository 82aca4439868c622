"""The HTTP event collector behind POST /v1/events: JSON events in, per-event verdicts out, Kafka behind.

Each event of a batch is judged on its own: first its JSON shape (`EventIn`), then
the shared contract (`features.events.validate`, the rules the SDK and the stream
job apply), so a client learns for each rejected event the field and the reason,
and the good events of the batch still go through. Accepted events are handed
to the SDK's `EventPublisher` (idempotent producer, key = user_id; Avro with the id of the
Confluent schema registry at FRESHRANK_SCHEMA_REGISTRY_URL when one is set), and the API
answers once the broker acknowledged each of them (or says which to resend, with the
reason: a registry that cannot be asked is one); outcomes are counted in
`freshrank_serve_events_total{outcome}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from features.events import EventType, InteractionEvent, Rejection, validate
from sdk.errors import PublisherBackpressure, SDKError, UndeliveredEventsError
from sdk.publisher import DeliveryCallback, EventPublisher
from sdk.schema_registry import SchemaRegistryRefused, SchemaRegistryUnavailable
from sdk.settings import KafkaConnection, KafkaSettings
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


@dataclass(frozen=True, slots=True)
class Published:
    """What became of each event handed to a sink, in order: None = the broker acknowledged it, else why not."""

    outcomes: list[str | None]
    retry_after_s: float = 1.0

    @property
    def acknowledged(self) -> int:
        return sum(outcome is None for outcome in self.outcomes)


class EventSink(Protocol):
    async def publish(self, events: list[InteractionEvent]) -> Published:
        """Hand events over and wait for the broker's verdict on each (bounded by the sink's timeout)."""
        ...

    def close(self) -> None: ...


QUEUE_FULL = "not accepted: the event queue towards Kafka is full; resend this event"


class KafkaEventSink:
    """Accepted events to Kafka through the SDK, answered only once the broker acknowledged them.

    One idempotent producer per process. A request waits for the delivery report of each of its
    events, at most `ack_timeout_s` (the producer's own delivery timeout, so an event reported as
    not delivered is not delivered later either, barring a lost acknowledgement): what the API
    answers as accepted is on the broker, so a killed pod loses nothing it acknowledged, and a
    client resends what it was told to (the stream job drops duplicates by event_id). A
    `KafkaException` from the producer rejects the events it concerns; a fatal one (e.g. the
    idempotent producer's sequence broke) replaces the producer, so later requests still work.
    """

    def __init__(
        self,
        config: KafkaEvents,
        metrics: ServingMetrics,
        make_publisher: Callable[[KafkaSettings, DeliveryCallback], EventPublisher] = EventPublisher,
    ) -> None:
        self._settings = KafkaSettings(
            **config.model_dump(include=set(KafkaConnection.model_fields)),
            topic=config.topic,
            queue_full_timeout_s=config.queue_full_timeout_s,
            delivery_timeout_ms=int(config.ack_timeout_s * 1000),
            client_id="freshrank-serve",
        )
        self._config = config
        self._metrics = metrics
        self._make_publisher = make_publisher
        self._publisher = make_publisher(self._settings, self._delivered)
        self._lock = threading.Lock()
        # Events waiting for their delivery report: id(event) -> (event, loop, future). The event is
        # held so its id cannot be reused before the report arrives.
        self._waiting: dict[int, tuple[InteractionEvent, asyncio.AbstractEventLoop, asyncio.Future[str | None]]] = {}
        self._closed = threading.Event()
        # Delivery reports are served by this thread, not by whichever request polls next.
        self._poller = threading.Thread(target=self._serve_reports, name="event-delivery-reports", daemon=True)
        self._poller.start()

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            try:
                self._publisher.poll(0.05)
            except Exception:  # a poll must never end the thread that resolves every waiting request
                log.exception("serving delivery reports failed")
                self._closed.wait(0.05)

    def _delivered(self, event: InteractionEvent, error: KafkaError | None) -> None:
        self._metrics.events.labels("delivered" if error is None else "failed").inc()
        if error is not None:
            log.warning("event %s not delivered: %s", event.event_id, error)
        with self._lock:
            waiting = self._waiting.pop(id(event), None)
        if waiting is not None:
            _, loop, future = waiting
            outcome = None if error is None else f"not delivered to Kafka ({error.str()}); resend this event"
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, outcome)

    def _enqueue(self, events: list[InteractionEvent], futures: list[asyncio.Future[str | None]]) -> list[str | None]:
        """Produce each event; returns per event None (enqueued: wait for its report) or why it was not."""
        if not events:
            return []
        loop = futures[0].get_loop()
        outcomes: list[str | None] = []
        for event, future in zip(events, futures, strict=True):
            if outcomes and outcomes[-1] == QUEUE_FULL:
                outcomes.append(QUEUE_FULL)  # keep order: nothing after a refused event goes first
                continue
            with self._lock:
                self._waiting[id(event)] = (event, loop, future)
            try:
                self._publisher.publish(event)
                outcomes.append(None)
                continue
            except PublisherBackpressure:
                outcomes.append(QUEUE_FULL)
            except KafkaException as exception:
                outcomes.append(self._producer_failed(exception))
            except SchemaRegistryUnavailable as error:
                outcomes.append(f"not accepted: {error}; resend this event")
            except SchemaRegistryRefused as error:
                outcomes.append(f"not accepted: the schema registry refused our schema ({error})")
            except SDKError as error:
                outcomes.append(f"not accepted: {error}; resend this event")
            with self._lock:
                self._waiting.pop(id(event), None)
        return outcomes

    def _producer_failed(self, exception: KafkaException) -> str:
        error = exception.args[0] if exception.args and isinstance(exception.args[0], KafkaError) else None
        if error is not None and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            self._metrics.events.labels("too_large").inc()
            return "the broker refuses this event: it is larger than the topic's message size limit"
        if error is not None and error.fatal():
            self._replace_publisher(error)
        else:
            log.error("the Kafka producer refused an event: %s", exception)
        return f"not accepted: the Kafka producer failed ({exception}); resend this event"

    def _replace_publisher(self, error: KafkaError) -> None:
        """A fatal producer error: every later produce() would fail. Start a new producer; fail the old one's."""
        log.error("fatal Kafka producer error, replacing the producer: %s", error)
        self._metrics.events.labels("producer_replaced").inc()
        with self._lock:
            old = self._publisher
            self._publisher = self._make_publisher(self._settings, self._delivered)
        with contextlib.suppress(Exception):
            old.close(timeout_s=0)  # its queue cannot be delivered: reports come back as failures
        self._fail_waiting("the Kafka producer was replaced after a fatal error")

    def _fail_waiting(self, reason: str) -> None:
        """Answer every request still waiting for a report that will not come."""
        with self._lock:
            failed = list(self._waiting.values())
            self._waiting.clear()
        for _, loop, future in failed:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, f"not delivered: {reason}; resend this event")

    async def publish(self, events: list[InteractionEvent]) -> Published:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[str | None]] = [loop.create_future() for _ in events]
        # A full producer queue blocks for up to queue_full_timeout_s: keep it off the event loop.
        enqueued = await asyncio.to_thread(self._enqueue, events, futures)
        outcomes: list[str | None] = []
        deadline = loop.time() + self._config.ack_timeout_s + 1.0  # the producer gives up first
        for event, refused, future in zip(events, enqueued, futures, strict=True):
            if refused is not None:
                outcomes.append(refused)
                continue
            try:
                async with asyncio.timeout_at(deadline):
                    outcomes.append(await asyncio.shield(future))
            except TimeoutError:
                with self._lock:
                    self._waiting.pop(id(event), None)
                outcomes.append("not acknowledged by Kafka in time; resend this event (duplicates are dropped)")
        return Published(outcomes, retry_after_s=1.0)

    def close(self, timeout_s: float | None = None) -> int:
        """Flush for at most `timeout_s` (config `shutdown_flush_s`); returns how many events were left undelivered."""
        timeout = self._config.shutdown_flush_s if timeout_s is None else timeout_s
        try:
            self._publisher.close(timeout_s=timeout)
            left = 0
        except UndeliveredEventsError as error:
            left = error.pending
            log.error("shutdown: %d events were not acknowledged by Kafka within %.1f s", error.pending, timeout)
        except SDKError as error:
            left = 0
            log.error("closing the event publisher: %s", error)
        self._closed.set()
        self._poller.join(timeout=1.0)
        self._metrics.events.labels("undelivered_at_shutdown").inc(left)
        self._fail_waiting("the API is shutting down")
        return left


def _settle(future: asyncio.Future[str | None], outcome: str | None) -> None:
    if not future.done():
        future.set_result(outcome)


class MemoryEventSink:
    """Keeps accepted events in a list (test double); `capacity` makes it refuse the rest as a full queue would."""

    def __init__(self) -> None:
        self.events: list[InteractionEvent] = []
        self.capacity: int | None = None

    async def publish(self, events: list[InteractionEvent]) -> Published:
        room = len(events) if self.capacity is None else max(0, self.capacity - len(self.events))
        self.events.extend(events[:room])
        return Published([None] * min(room, len(events)) + [QUEUE_FULL] * max(0, len(events) - room))

    def close(self) -> None:
        return None


def make_event_sink(config: KafkaEvents | MemoryEvents, metrics: ServingMetrics) -> KafkaEventSink | MemoryEventSink:
    if isinstance(config, KafkaEvents):
        return KafkaEventSink(config, metrics)
    return MemoryEventSink()
