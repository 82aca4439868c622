"""The Flink functions of the stream job: thin wrappers around `features/` and the I/O edges.

Follow an event through this file top to bottom:
PartitionFanOut (one poll request per partition per tick) ->
UserFeaturesByPartition (keyed by partition: read with KafkaPartitionReader,
decode, validate -> DLQ; admission: dedup + lateness -> DLQ; user features) ->
ItemFeaturesByBucket (keyed by item bucket: item features) ->
OnlineStoreWriter (Feast, one pipeline per row batch). DlqWriter sends refused
records to the DLQ topic with the reason in a header.

Why users are computed where the partition is read: the topic is keyed by
user_id, so every event of a user is in one partition, and grouping a poll's
events there costs one state call per poll instead of several per event.

State that must survive a crash lives in Flink keyed state only: reader
offsets, admission gates, aggregates and the schedule of rows still owed
(see streaming/entities.py). A restore therefore rewinds the reader and
everything derived from it together. Elements between operators are whole
batches (a poll's events for one item bucket, a table's due rows).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow.parquet as pq
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from pyflink.common import Types
from pyflink.datastream import OutputTag
from pyflink.datastream.functions import FlatMapFunction, KeyedProcessFunction, ProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from feature_repo.definitions import ITEM_VIEW, USER_VIEW
from features.admission import Admission, AdmissionGate
from features.codec import EventCodec
from features.events import InteractionEvent, validate
from features.item import ItemFeatures
from features.user import UserFeatures
from streaming import metrics
from streaming.entities import CachedObjects, EntityTable, FeatureRow, RowClock
from streaming.errors import OnlineStoreUnavailable
from streaming.online_store import OnlineStoreSink
from streaming.settings import StreamSettings

log = logging.getLogger("freshrank.stream")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record refused by the job, with where it came from and why."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    kind: str  # invalid | late


# Elements crossing operators are pickled; a frozen slots dataclass unpickles through
# dataclasses.fields() per object (a tenth of the job's time in a profile), a tuple does not.
EventFields = tuple[Any, ...]
_event_fields = attrgetter(*(field.name for field in fields(InteractionEvent)))


class ItemBatch(NamedTuple):
    """Admitted events of one poll whose items fall in one bucket (as field tuples)."""

    bucket: int
    events: list[EventFields]


DLQ = OutputTag("dlq", Types.PICKLED_BYTE_ARRAY())
ITEM_EVENTS = OutputTag("item-events", Types.PICKLED_BYTE_ARRAY())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def item_bucket(item_id: str, buckets: int) -> int:
    return zlib.crc32(item_id.encode()) % buckets


class TableTimers:
    """One processing-time timer per Flink key, at the earliest row its table owes.

    Only the earliest pending timer is remembered, in memory: a timer that fires
    early or twice just finds nothing due. Timers are for latency only: ticks
    wake every partition and a heartbeat wakes every item bucket each second, so
    a table restored from a checkpoint emits what it owes even if a restored
    timer never fires (seen with PyFlink's process mode).
    """

    def __init__(self) -> None:
        self._armed: dict[Any, int] = {}

    def arm(self, key: Any, due_ms: int | None, ctx: KeyedProcessFunction.Context) -> None:
        if due_ms is None:
            return
        armed = self._armed.get(key)
        if armed is None or due_ms < armed:
            ctx.timer_service().register_processing_time_timer(due_ms)
            self._armed[key] = due_ms

    def fired(self, key: Any, timestamp: int) -> None:
        if self._armed.get(key, -1) <= timestamp:
            self._armed.pop(key, None)


# --- reading and user features ---------------------------------------------------


class PartitionFanOut(FlatMapFunction):  # type: ignore[misc]
    """Turns each tick into one poll request per partition; finds partitions added while running."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self._partitions: list[int] = []
        self._refreshed = 0.0

    def open(self, runtime_context: RuntimeContext) -> None:
        self._admin = AdminClient(self.settings.kafka_config())

    def flat_map(self, value: Any) -> Iterator[int]:
        if time.monotonic() - self._refreshed > self.settings.partition_refresh_s or not self._partitions:
            self._refresh()
        yield from self._partitions

    def _refresh(self) -> None:
        try:
            topic = self._admin.list_topics(self.settings.topic, timeout=5).topics.get(self.settings.topic)
        except Exception as error:  # broker briefly away: keep polling the partitions we know
            log.warning("partition discovery failed: %s", error)
            return
        if topic is not None and topic.error is None:
            found = sorted(topic.partitions)
            if found != self._partitions:
                log.info("reading %s partitions %s", self.settings.topic, found)
            self._partitions = found
        self._refreshed = time.monotonic()


class KafkaPartitionReader:
    """Reads the records of one partition from an offset the caller owns (kept in Flink state).

    Offsets are committed to Kafka only so lag can be watched; they are never read back.
    """

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self._consumers: dict[int, Any] = {}
        self._committed = time.monotonic()

    def read(self, partition: int, next_offset: int) -> list[Any]:
        consumer = self._consumers.get(partition)
        if consumer is None:
            consumer = Consumer(
                {
                    **self.settings.kafka_config(),
                    "group.id": self.settings.consumer_group,
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "fetch.wait.max.ms": 20,
                }
            )
            consumer.assign([TopicPartition(self.settings.topic, partition, next_offset)])
            self._consumers[partition] = consumer
        messages: list[Any] = consumer.consume(self.settings.max_records_per_poll, 0)
        return messages

    def report(self, partition: int, next_offset: int) -> None:
        consumer = self._consumers[partition]
        tp = TopicPartition(self.settings.topic, partition, next_offset)
        # The high watermark cached from fetch responses: Tansu's ListOffsets is unreliable.
        _low, high = consumer.get_watermark_offsets(tp, cached=True)
        if high is not None and high >= 0:
            metrics.CONSUMER_LAG.labels(str(partition)).set(max(0, high - next_offset))
        if time.monotonic() - self._committed > 5:
            self._committed = time.monotonic()
            try:
                consumer.commit(offsets=[tp], asynchronous=True)
            except Exception as error:  # lag monitoring only: never fail the job for it
                log.debug("offset commit failed: %s", error)

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()


class UserFeaturesByPartition(KeyedProcessFunction):  # type: ignore[misc]
    """Keyed by partition: read, decode, validate, admit (dedup, lateness), user features.

    Emits due user rows as one batch, and the admitted events grouped by item
    bucket on the ITEM_EVENTS side output; refused records go to DLQ.
    """

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        bytes_type = Types.PICKLED_BYTE_ARRAY()
        self._offset = runtime_context.get_state(ValueStateDescriptor("next_offset", Types.LONG()))
        self._gate_store = runtime_context.get_map_state(MapStateDescriptor("gates", Types.STRING(), bytes_type))
        self._user_store = runtime_context.get_map_state(MapStateDescriptor("users", Types.STRING(), bytes_type))
        self._schedule_store = runtime_context.get_map_state(
            MapStateDescriptor("user_schedules", Types.STRING(), bytes_type)
        )
        self._reader = KafkaPartitionReader(self.settings)
        self._codec = EventCodec()
        self._catalog = Catalog(self.settings.catalog_path)
        self._clock = RowClock()
        self._timers = TableTimers()
        self._gates: dict[int, CachedObjects[AdmissionGate]] = {}
        self._tables: dict[int, EntityTable[UserFeatures]] = {}
        self._heartbeat = 0.0
        metrics.serve(self.settings.metrics_port)

    def _state_of(self, partition: int) -> tuple[CachedObjects[AdmissionGate], EntityTable[UserFeatures]]:
        table = self._tables.get(partition)
        if table is None:  # first touch of this partition by this instance (also after a restore)
            lateness = self.settings.lateness_ms
            self._gates[partition] = CachedObjects(
                self._gate_store,
                lambda data: AdmissionGate.from_bytes(data, lateness),
                lambda: AdmissionGate(lateness),
                self.settings.entity_cache_size,
            )
            users = CachedObjects(
                self._user_store, UserFeatures.from_bytes, UserFeatures.empty, self.settings.entity_cache_size
            )
            table = EntityTable(USER_VIEW, users, self._schedule_store, self.settings.flush_interval_ms, self._clock)
            self._tables[partition] = table
        return self._gates[partition], table

    def process_element(self, partition: int, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        gates, users = self._state_of(partition)
        next_offset = self._offset.value() or 0
        messages = self._reader.read(partition, next_offset)
        clock = now_ms()
        by_bucket: dict[int, list[EventFields]] = {}
        buckets = self.settings.item_buckets
        counts = {Admission.ADMITTED: 0, Admission.DUPLICATE: 0, Admission.LATE: 0}
        for message in messages:
            if message.error() is not None:
                log.warning("partition %s: %s", partition, message.error())
                continue
            offset = message.offset()
            if offset < next_offset:
                continue  # already processed before a restore
            next_offset = offset + 1
            decoded = self._codec.decode(message.value())
            if isinstance(decoded, InteractionEvent):
                rejection = validate(decoded, clock)
                if rejection is None:
                    event = decoded
                    gate = gates.get(event.user_id)
                    admission = gate.admit(event)
                    counts[admission] += 1
                    if admission is Admission.DUPLICATE:
                        continue
                    gates.changed(event.user_id)
                    if admission is Admission.LATE:
                        reason = (
                            f"late: event_time {event.event_time_ms} is more than "
                            f"{self.settings.lateness_ms} ms behind the user's newest"
                        )
                        yield DLQ, DeadLetter(partition, offset, message.key(), message.value(), reason, "late")
                        continue
                    users.aggregate(event.user_id).apply(event, self._catalog.category(event.item_id))
                    users.changed(event.user_id, clock)
                    by_bucket.setdefault(item_bucket(event.item_id, buckets), []).append(_event_fields(event))
                    continue
                decoded = rejection
            metrics.EVENTS.labels("invalid").inc()
            yield DLQ, DeadLetter(partition, offset, message.key(), message.value(), str(decoded), "invalid")
        for admission, count in counts.items():
            if count:
                metrics.EVENTS.labels(admission.value).inc(count)
        if time.monotonic() - self._heartbeat > 1.0:
            # Wakes every item bucket once a second, so one that gets no events still emits the
            # rows it owes (after a restore, too) without depending on restored timers.
            self._heartbeat = time.monotonic()
            for bucket in range(buckets):
                by_bucket.setdefault(bucket, [])
        for bucket, events in by_bucket.items():
            yield ITEM_EVENTS, ItemBatch(bucket, events)
        rows = users.due_rows(clock)
        if rows:
            yield rows
        gates.save(lambda gate: gate.to_bytes())
        users.save()
        if messages:
            self._offset.update(next_offset)
            self._reader.report(partition, next_offset)
        self._timers.arm(partition, users.next_due_ms(), ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        partition = ctx.get_current_key()
        self._timers.fired(partition, timestamp)
        _gates, users = self._state_of(partition)
        rows = users.due_rows(now_ms())
        if rows:
            yield rows
        users.save()
        self._timers.arm(partition, users.next_due_ms(), ctx)

    def close(self) -> None:
        self._reader.close()


# --- item features -----------------------------------------------------------------


class ItemFeaturesByBucket(KeyedProcessFunction):  # type: ignore[misc]
    """Keyed by item bucket: item features from admitted events; emits due item rows as one batch."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        bytes_type = Types.PICKLED_BYTE_ARRAY()
        self._item_store = runtime_context.get_map_state(MapStateDescriptor("items", Types.STRING(), bytes_type))
        self._schedule_store = runtime_context.get_map_state(
            MapStateDescriptor("item_schedules", Types.STRING(), bytes_type)
        )
        self._clock = RowClock()
        self._timers = TableTimers()
        self._tables: dict[int, EntityTable[ItemFeatures]] = {}

    def _table(self, bucket: int) -> EntityTable[ItemFeatures]:
        table = self._tables.get(bucket)
        if table is None:
            items = CachedObjects(
                self._item_store, ItemFeatures.from_bytes, ItemFeatures.empty, self.settings.entity_cache_size
            )
            table = EntityTable(ITEM_VIEW, items, self._schedule_store, self.settings.flush_interval_ms, self._clock)
            self._tables[bucket] = table
        return table

    def process_element(self, batch: ItemBatch, ctx: KeyedProcessFunction.Context) -> Iterator[list[FeatureRow]]:
        table = self._table(batch.bucket)
        clock = now_ms()
        for values in batch.events:
            event = InteractionEvent(*values)
            table.aggregate(event.item_id).apply(event)
            table.changed(event.item_id, clock)
        yield from self._emit(batch.bucket, table, clock, ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[list[FeatureRow]]:
        bucket = ctx.get_current_key()
        self._timers.fired(bucket, timestamp)
        yield from self._emit(bucket, self._table(bucket), now_ms(), ctx)

    def _emit(
        self, bucket: int, table: EntityTable[ItemFeatures], clock: int, ctx: KeyedProcessFunction.Context
    ) -> Iterator[list[FeatureRow]]:
        rows = table.due_rows(clock)
        if rows:
            yield rows
        table.save()
        self._timers.arm(bucket, table.next_due_ms(), ctx)


class Catalog:
    """item_id -> category from the batch item catalog (parquet), reloaded when the file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._categories: dict[str, str] = {}
        self._mtime = 0.0
        self._checked = 0.0

    def category(self, item_id: str) -> str | None:
        if self.path is not None and time.monotonic() - self._checked > 10:
            self._reload()
        return self._categories.get(item_id)

    def _reload(self) -> None:
        assert self.path is not None
        self._checked = time.monotonic()
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return
        if mtime != self._mtime:
            table = pq.read_table(self.path, columns=["item_id", "category"])
            self._categories = dict(zip(table["item_id"].to_pylist(), table["category"].to_pylist(), strict=True))
            self._mtime = mtime


# --- writing -------------------------------------------------------------------


class OnlineStoreWriter(ProcessFunction):  # type: ignore[misc]
    """Writes each row batch to the online store before taking the next; blocks and retries while Redis is down.

    Needs no state: a checkpoint barrier reaches this operator only after every
    batch emitted before it has been written. Blocking on a down Redis is the
    backpressure: the readers stop reading until it is back, nothing is dropped.
    """

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self._sink = OnlineStoreSink(self.settings.redis_connection_string(), self.settings.feast_registry)
        self._freshness = metrics.RecentFreshness(self.settings.freshness_window_s)
        self._retry(self._sink.open)
        metrics.serve(self.settings.metrics_port)

    def process_element(self, rows: list[FeatureRow], ctx: ProcessFunction.Context) -> Iterator[None]:
        self._retry(lambda: self._sink.write(rows))
        written = now_ms()
        for row in rows:
            metrics.ROWS_WRITTEN.labels(row.view).inc()
            if row.newest_event_ms is not None:
                self._freshness.observe(max(0, written - row.newest_event_ms) / 1000)
        self._freshness.publish()
        return iter(())  # a sink: PyFlink still wants an iterable back

    def _retry(self, action: Any) -> None:
        delay = 0.1
        while True:
            try:
                action()
                return
            except OnlineStoreUnavailable as error:
                metrics.SINK_RETRIES.inc()
                log.warning("%s", error)
                time.sleep(max(delay, error.retry_after_s))
                delay = min(delay * 2, 5.0)

    def close(self) -> None:
        self._sink.close()


class DlqWriter(ProcessFunction):  # type: ignore[misc]
    """Produces refused records to the DLQ topic, reason and origin in headers; waits for each ack."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self._producer = Producer({**self.settings.kafka_config(), "enable.idempotence": True})

    def process_element(self, letter: DeadLetter, ctx: ProcessFunction.Context) -> Iterator[None]:
        headers: list[tuple[str, str | bytes | None]] = [
            ("reason", letter.reason.encode()),
            ("kind", letter.kind.encode()),
            ("source.topic", self.settings.topic.encode()),
            ("source.partition", str(letter.partition).encode()),
            ("source.offset", str(letter.offset).encode()),
        ]
        self._producer.produce(self.settings.dlq_topic, key=letter.key, value=letter.value, headers=headers)
        metrics.DLQ_RECORDS.labels(letter.kind).inc()
        # DLQ records are rare; waiting for the ack keeps them from being lost in a crash.
        while self._producer.flush(5) > 0:
            log.warning("DLQ write to %s not acknowledged yet; retrying", self.settings.dlq_topic)
        return iter(())

    def close(self) -> None:
        self._producer.flush(10)
