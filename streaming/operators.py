"""The Flink functions of the stream job: thin wrappers around `features/` and the I/O edges.

Follow an event through this file top to bottom:
Metronome (ticks, evenly spaced) -> PartitionFanOut (one poll request per partition per tick) ->
UserFeaturesByPartition (keyed by partition: read with KafkaPartitionReader,
decode, validate -> DLQ; admission: dedup + lateness -> DLQ; user features) ->
ItemFeaturesByBucket (keyed by item bucket: item features) ->
each writes the rows it makes to Redis in Feast's layout (RowWriter, one pipeline
per batch). DeadLetterSink sends refused records to the DLQ topic with the reason
in a header.

Why users are computed where the partition is read: the topic is keyed by
user_id, so every event of a user is in one partition, and grouping a poll's
events there costs one state call per poll instead of several per event.

State that must survive a crash lives in Flink keyed state only: reader
offsets, admission gates, aggregates and the schedule of rows still owed
(see streaming/entities.py). A restore therefore rewinds the reader and
everything derived from it together. Elements between operators are whole
batches (a poll's events for one item bucket).

Imports: the operators run in PyFlink's thread mode, where this module is first
imported inside an operator thread (when Flink unpickles the functions). There a
pybind11 extension deadlocks its own import: pybind11 takes the GIL with
PyGILState_Ensure, which finds another thread state for the thread than the one
pemja runs it with, and waits forever for the GIL the thread already holds (gdb on
a job stuck in INITIALIZING: scipy's pypocketfft, pulled in by Feast's dask offline
store). So nothing the operators import may load one; tests/unit/streaming/
test_operator_imports.py checks it.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient
from pyflink.common import Types
from pyflink.datastream import OutputTag
from pyflink.datastream.functions import KeyedProcessFunction, MapFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from feature_repo.definitions import ITEM_VIEW, USER_VIEW
from feature_repo.layout import FeatureRow
from features.admission import EVICT_AFTER_MS, AdmissionGate
from features.declared import DeclaredView
from features.events import InteractionEvent
from features.item import ItemFeatures
from features.user import UserFeatures
from sdk.clock import wall_clock_ms
from sdk.schema_registry import SchemaRegistrySettings, consumer_codec
from streaming import metrics
from streaming.declared import DeclaredTables
from streaming.dlq import DeadLetterSink
from streaming.entities import CachedObjects, EntityTable, RowClock
from streaming.errors import DlqUnavailable, OnlineStoreUnavailable
from streaming.online_store import OnlineStoreSink
from streaming.partition import (
    DeadLetter,
    ItemBatch,
    Layout,
    PartitionMeta,
    PartitionProcessor,
    PartitionState,
    ProcessorConfig,
    layout_problem,
    running_layout,
)
from streaming.settings import StreamSettings

log = logging.getLogger("freshrank.stream")


ITEM_EVENTS = OutputTag("item-events", Types.PICKLED_BYTE_ARRAY())


def task_info(runtime_context: RuntimeContext) -> tuple[int, int]:
    """(subtask index, attempt number) of the running task.

    PyFlink 2.3's thread-mode context calls `getIndexOfThisSubtask()` on the Java
    RuntimeContext, which Flink 2 moved to `getTaskInfo()`: it raises. Ask the Java
    object directly there.
    """
    try:
        return runtime_context.get_index_of_this_subtask(), runtime_context.get_attempt_number()
    except Exception:
        info = runtime_context._runtime_context.getTaskInfo()
        return int(info.getIndexOfThisSubtask()), int(info.getAttemptNumber())


class Backoff:
    """Exponential delays between retries of an external write: 0.1 s doubling to 5 s."""

    def __init__(self) -> None:
        self.delay = 0.1

    def wait(self, at_least_s: float = 0.0) -> None:
        time.sleep(max(self.delay, at_least_s))
        self.delay = min(self.delay * 2, 5.0)


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


class Metronome(MapFunction):  # type: ignore[misc]
    """Passes one tick per `1 / per_second` s, evenly, by sleeping in the source's own task.

    Chained to the tick source, so ticks wait here, not in a network buffer: a checkpoint
    barrier is never queued behind more than one tick. When it falls behind (a long GC,
    a busy machine) it does not catch up in a burst.
    """

    def __init__(self, per_second: float) -> None:
        self.interval_s = 1.0 / per_second
        self._next = 0.0

    def map(self, value: int) -> int:
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
            now = self._next
        self._next = now + self.interval_s
        return value


class PartitionFanOut(KeyedProcessFunction):  # type: ignore[misc]
    """Turns each tick into one poll request (partition, partition count, item buckets, topic id) per partition.

    Keyed by a constant, so the layout the job's state was built with (partition
    count, item buckets) is one value in keyed state, checkpointed with the rest.
    A layout that differs from it (partitions added, ITEM_BUCKETS changed, at run
    time or across a restore) stops every poll, says why in the log, in
    `freshrank_stream_layout_mismatch` and in `freshrank status`: reading on
    would split users and items over two keys' state.
    The topic id rides along so a partition can tell a recreated topic.
    """

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self._partitions: list[int] = []
        self._topic_id = ""
        self._refreshed = 0.0
        self._warned = 0.0

    def open(self, runtime_context: RuntimeContext) -> None:
        self._admin = AdminClient(self.settings.kafka_config())
        self._layout_state = runtime_context.get_state(ValueStateDescriptor("layout", Types.PICKLED_BYTE_ARRAY()))

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[tuple[int, int, int, str]]:
        if time.monotonic() - self._refreshed > self.settings.partition_refresh_s or not self._partitions:
            self._refresh()
        if not self._partitions:
            return
        data = self._layout_state.value()
        saved = Layout.from_bytes(data) if data is not None else None
        running = running_layout(saved, len(self._partitions), self.settings.item_buckets)
        if saved is None:
            self._layout_state.update(running.to_bytes())
        else:
            problem = layout_problem(saved, running)
            if problem is not None:
                metrics.LAYOUT_MISMATCH.set(1)
                metrics.READING_PAUSED.labels("layout").set(1)
                if time.monotonic() - self._warned > 30:
                    self._warned = time.monotonic()
                    log.error("reading stopped: %s", problem)
                return
        count, buckets = running.partitions, running.item_buckets
        for partition in self._partitions:
            yield partition, count, buckets, self._topic_id

    def _refresh(self) -> None:
        topic_name = self.settings.topic
        try:
            topic = self._admin.list_topics(topic_name, timeout=5).topics.get(topic_name)
        except Exception as error:  # broker briefly away: keep polling the partitions we know
            log.warning("partition discovery failed: %s", error)
            return
        if topic is not None and topic.error is None and topic.partitions:
            found = sorted(topic.partitions)
            if found != self._partitions:
                log.info("reading %s partitions %s", topic_name, found)
            self._partitions = found
        try:
            described = self._admin.describe_topics(TopicCollection([topic_name]))[topic_name].result(timeout=5)
            self._topic_id = str(described.topic_id or "")
        except Exception as error:  # an old broker or an ACL: recreation then goes unnoticed (README)
            log.debug("topic id of %s unknown: %s", topic_name, error)
        self._refreshed = time.monotonic()


class OffsetReset(NamedTuple):
    """A stored offset the log no longer has, and where reading resumes."""

    partition: int
    stored: int
    resume_at: int
    cause: str  # retention: records before the log start are gone | log_reset: the log ends before it


def partition_consumer_config(settings: StreamSettings) -> dict[str, Any]:
    """librdkafka properties of a partition reader's consumer.

    The consumer fetches again only once the job has taken what it fetched last
    (`queued.min.messages` 1; a tick drains it): one fetch per partition per tick,
    not one per batch a producer sent. The embedded broker (Tansu, memory storage)
    lists every batch a partition holds on each fetch, so at 5,000 events/s the
    fetch-per-batch pattern took it to ~0.9 of a core (README, "Freshness benchmark").
    """
    return {
        **settings.kafka_config(),
        "group.id": settings.consumer_group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "fetch.wait.max.ms": 20,
        "queued.min.messages": 1,
        "fetch.queue.backoff.ms": 10,
        "queued.max.messages.kbytes": settings.consumer_queue_kbytes,
        "fetch.max.bytes": 4 * 1024 * 1024,
        "max.partition.fetch.bytes": 1024 * 1024,
    }


class KafkaPartitionReader:
    """Reads the records of one partition from an offset the caller owns (kept in Flink state).

    Out-of-range policy: librdkafka is told to report (`auto.offset.reset=error`)
    instead of silently jumping to the end. A stored offset below the log start
    (retention passed) resumes at the earliest record and counts the records gone;
    one past the log end (the topic was recreated, or a memory-only broker restarted)
    resumes at the earliest record of the new log. Both are logged and counted in
    `freshrank_stream_offset_resets_total`; nothing is skipped silently.

    Offsets are committed to Kafka only so lag can be watched; they are never read back.
    """

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self._consumers: dict[int, Any] = {}
        self._committed = time.monotonic()

    def _consumer(self, partition: int, next_offset: int) -> Any:
        consumer = self._consumers.get(partition)
        if consumer is None:
            consumer = Consumer(partition_consumer_config(self.settings))
            consumer.assign([TopicPartition(self.settings.topic, partition, next_offset)])
            self._consumers[partition] = consumer
        return consumer

    def read(self, partition: int, next_offset: int) -> tuple[list[Any], OffsetReset | None]:
        consumer = self._consumer(partition, next_offset)
        messages: list[Any] = consumer.consume(self.settings.max_records_per_poll, 0)
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(message)
            elif error.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
                return records, self._reset(partition, next_offset, consumer)
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("partition %s: %s", partition, error)
        return records, None

    def _reset(self, partition: int, stored: int, consumer: Any) -> OffsetReset | None:
        tp = TopicPartition(self.settings.topic, partition)
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
        except Exception as error:  # broker away: try again on the next poll
            log.warning("partition %s: offset %s out of range, watermarks unknown: %s", partition, stored, error)
            return None
        if low <= stored <= high:
            return None  # a transient answer: keep reading from the stored offset
        cause = "retention" if stored < low else "log_reset"
        consumer.assign([TopicPartition(self.settings.topic, partition, low)])
        metrics.OFFSET_RESETS.labels(str(partition), cause).inc()
        if cause == "retention":
            metrics.RECORDS_SKIPPED.labels(str(partition)).inc(low - stored)
            log.error(
                "partition %s: offset %s is before the log start %s (retention passed): %s records are gone; "
                "resuming at %s",
                partition,
                stored,
                low,
                low - stored,
                low,
            )
        else:
            log.error(
                "partition %s: offset %s is past the log end %s: the topic was recreated or the broker lost its log; "
                "resuming at the earliest offset %s",
                partition,
                stored,
                high,
                low,
            )
        return OffsetReset(partition, stored, low, cause)

    def seek(self, partition: int, offset: int) -> None:
        """Read `partition` from `offset` next (a recreated topic restarts at 0)."""
        consumer = self._consumers.get(partition)
        if consumer is not None:
            consumer.assign([TopicPartition(self.settings.topic, partition, offset)])

    def report(self, partition: int, next_offset: int) -> None:
        consumer = self._consumers[partition]
        tp = TopicPartition(self.settings.topic, partition, next_offset)
        # The high watermark cached from fetch responses: Tansu's ListOffsets is unreliable.
        _low, high = consumer.get_watermark_offsets(tp, cached=True)
        if high is not None and high >= 0:
            metrics.CONSUMER_LAG.labels(str(partition)).set(high - next_offset)
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
    """Keyed by partition: read, then `PartitionProcessor` (streaming/partition.py) does the rest.

    Order per poll: process in memory, write the dead letters and wait for their
    delivery reports (retrying, and reading nothing else, while the DLQ refuses),
    then write the user rows to Redis, emit the item batches and save the state.
    A checkpoint therefore never holds an offset past a refused record that is
    not on the DLQ, nor a schedule whose rows are not in Redis.
    Declared views keyed by user_id (`declared`) are computed here too (streaming/declared.py).
    """

    def __init__(self, settings: StreamSettings, declared: tuple[DeclaredView, ...] = ()) -> None:
        self.settings = settings
        self.declared = tuple(view for view in declared if view.entity_key == "user_id")
        self.all_declared = declared

    def open(self, runtime_context: RuntimeContext) -> None:
        # First, so a task that fails to open still counts as a restart.
        metrics.serve(self.settings.metrics_port, self.settings.metrics_bind_address)
        metrics.task_opened("UserFeaturesByPartition", *task_info(runtime_context))
        bytes_type = Types.PICKLED_BYTE_ARRAY()
        self._meta = runtime_context.get_state(ValueStateDescriptor("partition_meta", bytes_type))
        self._gate_store = runtime_context.get_map_state(MapStateDescriptor("gates", Types.STRING(), bytes_type))
        self._user_store = runtime_context.get_map_state(MapStateDescriptor("users", Types.STRING(), bytes_type))
        self._schedule_store = runtime_context.get_map_state(
            MapStateDescriptor("user_schedules", Types.STRING(), bytes_type)
        )
        self._declared_stores = declared_state(runtime_context, "user")
        settings = self.settings
        self._reader = KafkaPartitionReader(settings)
        self._catalog = ItemCategories(settings.catalog_path)
        self._processor = PartitionProcessor(
            ProcessorConfig(
                lateness_ms=settings.lateness_ms,
                max_skew_ms=settings.max_ingest_skew_ms,
                max_dlq_value_bytes=settings.max_dlq_record_bytes,
            ),
            self._catalog.category,
            # The file registry, or a Confluent-compatible registry at FRESHRANK_SCHEMA_REGISTRY_URL.
            consumer_codec(SchemaRegistrySettings()),
        )
        self._dlq = DeadLetterSink(settings.kafka_config(), settings.dlq_topic, settings.topic)
        self._dlq.open()
        self._writer = RowWriter(settings, self.all_declared)
        self._clock = RowClock()
        self._timers = TableTimers()
        self._states: dict[int, PartitionState] = {}
        self._heartbeat = 0.0
        self._stall_logged = 0.0
        self._stalled = False
        # The meta bytes last put in state, per partition: an idle poll changes nothing and writes nothing.
        self._saved_meta: dict[int, bytes] = {}

    def _state_of(self, partition: int) -> PartitionState:
        state = self._states.get(partition)
        if state is None:  # first touch of this partition by this instance (also after a restore)
            lateness = self.settings.lateness_ms
            data = self._meta.value()
            meta = PartitionMeta.from_bytes(data) if data is not None else PartitionMeta()
            gates = CachedObjects(
                self._gate_store,
                lambda data: AdmissionGate.from_bytes(data, lateness),
                lambda: AdmissionGate(lateness),
                1,
            )
            users = CachedObjects(self._user_store, UserFeatures.from_bytes, UserFeatures.empty, 1)
            table = EntityTable(USER_VIEW, users, self._schedule_store, self.settings.flush_interval_ms, self._clock)
            declared = declared_tables(self.declared, self._declared_stores, self.settings, self._clock)
            state = self._states[partition] = PartitionState(meta, gates, users=table, declared=declared)
            # One cache budget per operator instance, split over the partitions it holds.
            share = max(1, self.settings.entity_cache_size // len(self._states))
            for held in self._states.values():
                held.gates.capacity = held.users.aggregates.capacity = share
                if held.declared is not None:
                    held.declared.set_capacity(share)
        return state

    def process_element(self, poll: tuple[int, int, int, str], ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        partition, partition_count, item_buckets, topic_id = poll
        state = self._state_of(partition)
        if state.meta.topic_recreated(topic_id):
            metrics.OFFSET_RESETS.labels(str(partition), "topic_recreated").inc()
            log.error(
                "partition %s: topic %s was deleted and recreated (new id %s): reading the new log from offset 0",
                partition,
                self.settings.topic,
                topic_id,
            )
            self._reader.seek(partition, 0)
        self._catalog.maybe_reload()
        records, reset = self._reader.read(partition, state.meta.next_offset)
        if reset is not None:
            state.meta.next_offset = reset.resume_at
        clock = wall_clock_ms()
        result = self._processor.process(partition, state, records, clock, Layout(partition_count, item_buckets))
        if result.stalled_at is not None:
            self._reader.seek(partition, result.stalled_at)
            metrics.READING_PAUSED.labels("schema_registry").set(1)
            self._stalled = True
            metrics.SCHEMA_LOOKUP_FAILURES.inc()
            if time.monotonic() - self._stall_logged > 10:
                self._stall_logged = time.monotonic()
                log.error("partition %s paused at offset %s: %s", partition, result.stalled_at, result.stall_reason)
        elif self._stalled:
            metrics.READING_PAUSED.labels("schema_registry").set(0)
            self._stalled = False
        if result.dead_letters:
            self._write_dead_letters(result.dead_letters)
        # Every poll (also after a restore with nothing to read), and before the event counts: a scrape
        # that sees events admitted sees their users in the gauge.
        metrics.ENTITIES.labels(USER_VIEW).set(sum(len(s.users) for s in self._states.values()))
        for outcome, count in result.counts.items():
            metrics.EVENTS.labels(outcome).inc(count)
        if result.clamped:
            metrics.CLOCK_SKEW_CLAMPED.inc(result.clamped)
        if result.evicted:
            metrics.ENTITIES_EVICTED.labels(USER_VIEW).inc(result.evicted)
        by_bucket = result.item_batches
        if time.monotonic() - self._heartbeat > 1.0:
            # Wakes every item bucket once a second, so one that gets no events still emits the
            # rows it owes (after a restore, too) without depending on restored timers, and learns
            # this partition's clock for its evictions.
            self._heartbeat = time.monotonic()
            for bucket in range(item_buckets):
                by_bucket.setdefault(bucket, [])
        self._writer.write(result.user_rows)
        meta = state.meta
        for bucket, events in by_bucket.items():
            yield ITEM_EVENTS, ItemBatch(bucket, events, partition, meta.clock_ms)
        saved = state.save()
        if saved != self._saved_meta.get(partition):
            self._meta.update(saved)
            self._saved_meta[partition] = saved
        if records or reset is not None:
            self._reader.report(partition, meta.next_offset)
        self._timers.arm(partition, state.next_due_ms(), ctx)

    def _write_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Write until every letter is confirmed; meanwhile this task reads nothing (backpressure)."""
        backoff = Backoff()
        owed = letters
        while True:
            try:
                self._dlq.write(owed)
                break
            except DlqUnavailable as error:
                if error.fatal:
                    raise
                metrics.DLQ_WRITE_FAILURES.inc(len(error.undelivered))
                metrics.READING_PAUSED.labels("dlq").set(1)
                log.error(
                    "%s to topic %s: reading paused until it can be written; nothing is skipped",
                    error,
                    self.settings.dlq_topic,
                )
                owed = error.undelivered
                backoff.wait()
        metrics.READING_PAUSED.labels("dlq").set(0)
        for letter in letters:
            metrics.DLQ_RECORDS.labels(letter.kind).inc()
            if letter.truncated:
                metrics.DLQ_TRUNCATED.inc()

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        partition = ctx.get_current_key()
        self._timers.fired(partition, timestamp)
        state = self._state_of(partition)
        self._writer.write(state.due_rows(wall_clock_ms()))
        state.save()
        self._timers.arm(partition, state.next_due_ms(), ctx)
        return iter(())

    def close(self) -> None:
        self._reader.close()
        self._dlq.close()
        self._writer.close()


# --- item features -----------------------------------------------------------------


class ItemFeaturesByBucket(KeyedProcessFunction):  # type: ignore[misc]
    """Keyed by item bucket: item features from admitted events; writes the due item rows as one batch.

    Idle items leave state like idle users, on a clock that is the *slowest*
    partition's clock this bucket has heard from (kept in state): a partition
    that runs behind may still carry events of an item, so only time every
    partition has passed counts. Declared views keyed by item_id are computed here too.
    """

    def __init__(self, settings: StreamSettings, declared: tuple[DeclaredView, ...] = ()) -> None:
        self.settings = settings
        self.declared = tuple(view for view in declared if view.entity_key == "item_id")
        self.all_declared = declared

    def open(self, runtime_context: RuntimeContext) -> None:
        metrics.serve(self.settings.metrics_port, self.settings.metrics_bind_address)
        metrics.task_opened("ItemFeaturesByBucket", *task_info(runtime_context))
        bytes_type = Types.PICKLED_BYTE_ARRAY()
        self._item_store = runtime_context.get_map_state(MapStateDescriptor("items", Types.STRING(), bytes_type))
        self._schedule_store = runtime_context.get_map_state(
            MapStateDescriptor("item_schedules", Types.STRING(), bytes_type)
        )
        self._clocks = runtime_context.get_map_state(MapStateDescriptor("partition_clocks", Types.INT(), Types.LONG()))
        self._declared_stores = declared_state(runtime_context, "item")
        self._declared: dict[int, DeclaredTables | None] = {}
        self._writer = RowWriter(self.settings, self.all_declared)
        self._clock = RowClock()
        self._timers = TableTimers()
        self._tables: dict[int, EntityTable[ItemFeatures]] = {}
        self._partition_clocks: dict[int, dict[int, int]] = {}
        self._evicted_at: dict[int, float] = {}

    def _table(self, bucket: int) -> EntityTable[ItemFeatures]:
        table = self._tables.get(bucket)
        if table is None:
            items = CachedObjects(self._item_store, ItemFeatures.from_bytes, ItemFeatures.empty, 1)
            table = EntityTable(ITEM_VIEW, items, self._schedule_store, self.settings.flush_interval_ms, self._clock)
            self._tables[bucket] = table
            self._declared[bucket] = declared_tables(self.declared, self._declared_stores, self.settings, self._clock)
            self._partition_clocks[bucket] = dict(self._clocks.items())
            share = max(1, self.settings.entity_cache_size // len(self._tables))
            for held in self._tables.values():
                held.aggregates.capacity = share
            for tables in self._declared.values():
                if tables is not None:
                    tables.set_capacity(share)
        return table

    def process_element(self, batch: ItemBatch, ctx: KeyedProcessFunction.Context) -> Iterator[None]:
        table = self._table(batch.bucket)
        declared = self._declared[batch.bucket]
        clock = wall_clock_ms()
        for values in batch.events:
            event = InteractionEvent(*values)
            table.aggregate(event.item_id).apply(event)
            table.changed(event.item_id, clock, event.event_time_ms)
            if declared is not None:
                declared.apply(event, clock)
        clocks = self._partition_clocks[batch.bucket]
        if batch.partition_clock_ms > clocks.get(batch.partition, 0):
            clocks[batch.partition] = batch.partition_clock_ms
            self._clocks.put(batch.partition, batch.partition_clock_ms)
        if time.monotonic() - self._evicted_at.get(batch.bucket, 0.0) > 10 and clocks:
            self._evicted_at[batch.bucket] = time.monotonic()
            gone = table.evict(min(clocks.values()), EVICT_AFTER_MS)
            if declared is not None:
                declared.evict(min(clocks.values()), EVICT_AFTER_MS)
            if gone:
                metrics.ENTITIES_EVICTED.labels(ITEM_VIEW).inc(len(gone))
            metrics.ENTITIES.labels(ITEM_VIEW).set(sum(len(t) for t in self._tables.values()))
        self._emit(batch.bucket, table, clock, ctx)
        return iter(())  # rows are written here, nothing flows on

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[None]:
        bucket = ctx.get_current_key()
        self._timers.fired(bucket, timestamp)
        self._emit(bucket, self._table(bucket), wall_clock_ms(), ctx)
        return iter(())

    def _emit(
        self, bucket: int, table: EntityTable[ItemFeatures], clock: int, ctx: KeyedProcessFunction.Context
    ) -> None:
        declared = self._declared[bucket]
        rows = table.due_rows(clock)
        due = table.next_due_ms()
        if declared is not None:
            rows += declared.due_rows(clock)
            declared_due = declared.next_due_ms()
            due = declared_due if due is None else due if declared_due is None else min(due, declared_due)
        self._writer.write(rows)
        table.save()
        if declared is not None:
            declared.save()
        self._timers.arm(bucket, due, ctx)

    def close(self) -> None:
        self._writer.close()


def parquet_problem(data: bytes) -> str | None:
    """Why `data` cannot be a whole parquet file (magic bytes, footer length): a cheap check before a reader starts."""
    if len(data) < 12 or data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        return f"not a whole parquet file ({len(data)} bytes; magic bytes missing at the start or end)"
    footer = int.from_bytes(data[-8:-4], "little")
    if footer > len(data) - 12:
        return f"parquet footer of {footer} bytes does not fit in a {len(data)}-byte file"
    return None


_READ_CATEGORIES = """
import json, pathlib, sys
from simulator.catalog import read_catalog
items = read_catalog(pathlib.Path(sys.argv[1]))
json.dump({item.item_id: item.category for item in items if isinstance(item.category, str)}, sys.stdout)
"""


def read_categories(path: Path, timeout_s: float = 60.0) -> dict[str, str]:
    """item_id -> category of a catalog parquet, read by `simulator.catalog.read_catalog` in a child process.

    Not in the operator's own interpreter: there pyarrow's reader hung for good (seen
    twice in the reliability suite, py-spy showing the thread idle inside
    ParquetFile.read) while the other operators' threads were starting, and a
    corrupt file took the whole job process down. A child that hangs or dies is
    a failed reload, nothing more.
    """
    python = shutil.which("python3") or shutil.which("python") or "python3"
    done = subprocess.run(
        [python, "-c", _READ_CATEGORIES, str(path)], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    categories: dict[str, str] = json.loads(done.stdout)
    return categories


class ItemCategories:
    """item_id -> category from the batch item catalog (parquet), reloaded when the file changes.

    A reload that fails (a file half-written by a writer that does not rename, a
    corrupt or schema-less file) keeps the previous catalog, logs why and counts it
    in `freshrank_stream_catalog_reload_failures_total`; it is tried again when the
    file changes. The catalog's own writer (`write_catalog`) replaces it atomically.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._categories: dict[str, str] = {}
        self._mtime: float | None = None
        self._checked = 0.0

    def category(self, item_id: str) -> str | None:
        return self._categories.get(item_id)

    def maybe_reload(self) -> None:
        """Reload if the file changed; checked at most every 10 s (the operator calls this every poll)."""
        if self.path is None or time.monotonic() - self._checked < 10:
            return
        self._checked = time.monotonic()
        try:
            stat = self.path.stat()
        except OSError:
            return
        mtime = stat.st_mtime_ns + stat.st_size  # both: a rewrite within one mtime tick still counts
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            data = self.path.read_bytes()
            problem = parquet_problem(data)
            if problem is not None:
                raise ValueError(problem)
            categories = read_categories(self.path)
        except Exception as error:  # a bad file, a timeout, a reader that died
            metrics.CATALOG_RELOAD_FAILURES.inc()
            log.error("catalog %s unreadable, keeping the previous one (%s items): %s", self.path, len(self), error)
            return
        self._categories = categories
        log.info("catalog %s loaded: %s items", self.path, len(self._categories))

    def __len__(self) -> int:
        return len(self._categories)


# --- declared views ----------------------------------------------------------------


def declared_state(runtime_context: RuntimeContext, kind: str) -> tuple[Any, Any]:
    """The two MapStates every declared view of an entity kind shares (entries prefixed by view name)."""
    bytes_type = Types.PICKLED_BYTE_ARRAY()
    return (
        runtime_context.get_map_state(MapStateDescriptor(f"declared_{kind}s", Types.STRING(), bytes_type)),
        runtime_context.get_map_state(MapStateDescriptor(f"declared_{kind}_schedules", Types.STRING(), bytes_type)),
    )


def declared_tables(
    views: tuple[DeclaredView, ...], stores: tuple[Any, Any], settings: StreamSettings, clock: RowClock
) -> DeclaredTables | None:
    """The declared views of one Flink key (None when none is declared); logs what a changed view kept."""
    if not views:
        return None
    tables = DeclaredTables(views, stores[0], stores[1], settings.flush_interval_ms, clock)
    for change in tables.changes:
        if change not in _CHANGES_LOGGED:  # every Flink key finds the same change: say it once
            _CHANGES_LOGGED.add(change)
            log.warning("%s", change)
    return tables


_CHANGES_LOGGED: set[str] = set()


# --- writing -------------------------------------------------------------------


class RowWriter:
    """Writes a batch of rows to the online store before the operator goes on; blocks and retries while Redis refuses.

    Used by both feature operators, which write the rows they make where they make
    them (no pickling of rows to a sink task). The rows of a call are in Redis
    before the operator returns to Flink, so a checkpoint barrier that follows
    covers them. Blocking on a refusing Redis (down, frozen, out of memory,
    read-only replica) is the backpressure: the readers stop reading until it
    takes writes again, nothing is dropped.
    """

    def __init__(self, settings: StreamSettings, declared: tuple[DeclaredView, ...] = ()) -> None:
        self._sink = OnlineStoreSink(settings.redis_connection_string(), declared=declared)
        self._freshness = metrics.recent_freshness(settings.freshness_window_s)
        self._retry(self._sink.open)

    def write(self, rows: list[FeatureRow]) -> None:
        if not rows:
            return
        self._retry(lambda: self._sink.write(rows))
        written = wall_clock_ms()
        counts: dict[str, int] = {}
        ages: list[int] = []
        for row in rows:
            counts[row.view] = counts.get(row.view, 0) + 1
            if row.newest_event_ms is not None:
                ages.append(max(0, written - row.newest_event_ms))
        for view, count in counts.items():
            metrics.ROWS_WRITTEN.labels(view).inc(count)
        self._freshness.observe_ms(ages)
        self._freshness.publish()

    def _retry(self, action: Any) -> None:
        backoff = Backoff()
        logged = 0.0
        paused = False
        while True:
            try:
                action()
                if paused:
                    metrics.READING_PAUSED.labels("online_store").set(0)
                return
            except OnlineStoreUnavailable as error:
                metrics.SINK_RETRIES.labels(error.cause).inc()
                metrics.READING_PAUSED.labels("online_store").set(1)
                paused = True
                if time.monotonic() - logged > 10:
                    logged = time.monotonic()
                    log.warning("%s", error)
                backoff.wait(error.retry_after_s)

    def close(self) -> None:
        self._sink.close()
