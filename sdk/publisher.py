"""EventPublisher: the client SDK that puts interaction events on Kafka.

Values are Avro in Confluent wire format, with the schema id of the file registry, or
of a Confluent-compatible registry when FRESHRANK_SCHEMA_REGISTRY_URL is set
(`sdk.schema_registry`: subject `<topic>-value`, registered on first use).

Guarantees: an event is validated before anything is sent (a bad one raises
`InvalidEventError` naming the field); accepted events go out through an
idempotent producer (acks=all) keyed by user_id, so one user's events stay in
order on one partition; every delivery outcome reaches the caller's callback
and the counters; `flush()` / `close()` / the context manager raise if any
accepted event was not acknowledged, so nothing is dropped silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

from confluent_kafka import KafkaError, Message, Producer

from features.codec import EventCodec
from features.events import InteractionEvent, validate
from sdk.clock import wall_clock_ms
from sdk.errors import InvalidEventError, PublisherBackpressure, PublisherClosedError, UndeliveredEventsError
from sdk.schema_registry import SchemaRegistrySettings, producer_codec
from sdk.settings import KafkaSettings

DeliveryCallback = Callable[[InteractionEvent, KafkaError | None], None]


@dataclass(frozen=True)
class PublisherStats:
    accepted: int
    delivered: int
    failed: int

    @property
    def pending(self) -> int:
        return self.accepted - self.delivered - self.failed


class EventPublisher:
    """Validates, encodes and publishes events. Thread-safe for publish(); one instance per process."""

    def __init__(
        self,
        settings: KafkaSettings | None = None,
        on_delivery: DeliveryCallback | None = None,
        codec: EventCodec | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
        schema_registry: SchemaRegistrySettings | None = None,
    ) -> None:
        self.settings = settings or KafkaSettings()
        self._on_delivery = on_delivery
        # With FRESHRANK_SCHEMA_REGISTRY_URL set, the codec writes the id that registry gives our
        # schema. It is resolved on the first publish, so a registry outage fails publish() with
        # SchemaRegistryUnavailable (retry) instead of the constructor (an app's start-up).
        self._schema_registry = schema_registry or SchemaRegistrySettings()
        self._codec: EventCodec | None = codec
        self._clock_ms = clock_ms
        # librdkafka's own log lines go to Python logging, not straight to stderr.
        self._producer = Producer(self.settings.producer_config(), logger=logging.getLogger("freshrank.sdk.kafka"))
        self._lock = threading.Lock()
        self._accepted = 0
        self._delivered = 0
        self._failed = 0
        self._closed = False
        self.last_error: KafkaError | None = None

    @property
    def stats(self) -> PublisherStats:
        with self._lock:
            return PublisherStats(self._accepted, self._delivered, self._failed)

    def publish(self, event: InteractionEvent) -> None:
        """Validate and enqueue one event. Blocks while the local queue is full, up to queue_full_timeout_s."""
        if self._closed:
            raise PublisherClosedError("publish() after close()")
        rejection = validate(event, self._clock_ms())
        if rejection is not None:
            raise InvalidEventError(rejection.field, rejection.reason)
        value = self._event_codec().encode(event)
        deadline = time.monotonic() + self.settings.queue_full_timeout_s
        while True:
            try:
                self._producer.produce(
                    self.settings.topic,
                    key=event.user_id.encode(),
                    value=value,
                    on_delivery=self._delivery_handler(event),
                )
                break
            except BufferError:
                # Queue full: serve delivery reports to make room, then retry.
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PublisherBackpressure(retry_after_s=0.1, queued=len(self._producer)) from None
                self._producer.poll(min(0.1, remaining))
        with self._lock:
            self._accepted += 1
        self._producer.poll(0)

    def _event_codec(self) -> EventCodec:
        with self._lock:
            if self._codec is None:
                self._codec = producer_codec(self._schema_registry, self.settings.topic)
            return self._codec

    def publish_many(self, events: list[InteractionEvent]) -> None:
        """Validate every event first, then enqueue them: a bad event in the batch sends nothing."""
        now = self._clock_ms()
        for index, event in enumerate(events):
            rejection = validate(event, now)
            if rejection is not None:
                raise InvalidEventError(f"events[{index}].{rejection.field}", rejection.reason)
        for event in events:
            self.publish(event)

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""
        return int(self._producer.poll(timeout_s))

    def flush(self, timeout_s: float = 30.0) -> PublisherStats:
        """Wait until every accepted event is acknowledged or failed; raise if some were neither or failed."""
        self._producer.flush(timeout_s)
        stats = self.stats
        if stats.pending or stats.failed:
            raise UndeliveredEventsError(pending=stats.pending, failed=stats.failed)
        return stats

    def close(self, timeout_s: float = 30.0) -> PublisherStats:
        self._closed = True
        return self.flush(timeout_s)

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            # Still deliver what was accepted, but don't mask the caller's error.
            self._closed = True
            self._producer.flush(self.settings.queue_full_timeout_s)

    def _delivery_handler(self, event: InteractionEvent) -> Callable[[KafkaError | None, Message], None]:
        def handle(error: KafkaError | None, _message: Message) -> None:
            with self._lock:
                if error is None:
                    self._delivered += 1
                else:
                    self._failed += 1
                    self.last_error = error
            if self._on_delivery is not None:
                self._on_delivery(event, error)

        return handle


def publish_paced(
    publisher: EventPublisher,
    events: Iterable[InteractionEvent],
    first_event_ms: int,
    paced: bool = True,
    on_progress: Callable[[int], None] = lambda _published: None,
    live: bool = False,
) -> int:
    """Publish events in order, each no earlier than its event time after `first_event_ms` (replay at 1x).

    With `live=True` event times are wall-clock times: each event goes out when the
    clock reaches its event time, so time spent building the events before the
    first one is not added to every event's age (it was ~3 s, counted as staleness).
    Returns how many were published. With `paced=False`, publishes as fast as the broker takes them.
    """
    wall_start = time.monotonic()
    published = 0
    for event in events:
        if paced:
            if live:
                ahead_s = (event.event_time_ms - wall_clock_ms()) / 1000
            else:
                ahead_s = (event.event_time_ms - first_event_ms) / 1000 - (time.monotonic() - wall_start)
            if ahead_s > 0.002:
                publisher.poll(0)
                time.sleep(ahead_s)
        publisher.publish(event)
        published += 1
        if published % 500 == 0:
            on_progress(published)
    on_progress(published)
    return published
