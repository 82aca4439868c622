"""The Flink functions of the stream job: thin wrappers around `features/` and the I/O edges.

Follow an event through this file top to bottom:
PartitionFanOut -> KafkaPartitionReader (decode, validate; bad -> DLQ) ->
UserFeaturesOperator (admission: dedup + lateness; user features) ->
ItemFeaturesOperator (item features) -> OnlineStoreWriter (Feast, batched) .
DlqWriter sends rejected records to the DLQ topic with the reason in a header.

State that must survive a crash lives in Flink keyed state only: reader
offsets, admission gates, aggregator bytes, row timestamps and the online
store buffer. A restore therefore rewinds the reader and everything derived
from it together.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from pyflink.common import Types
from pyflink.datastream import OutputTag
from pyflink.datastream.functions import FlatMapFunction, KeyedProcessFunction, ProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from feature_repo.definitions import ITEM_VIEW, USER_VIEW
from features.admission import Admission, AdmissionGate
from features.codec import EventCodec
from features.events import InteractionEvent, validate
from features.item import ItemFeatures
from features.user import UserFeatures
from streaming import metrics
from streaming.errors import OnlineStoreUnavailable
from streaming.online_store import FeatureRow, OnlineStoreSink
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


DLQ = OutputTag("dlq", Types.PICKLED_BYTE_ARRAY())
ADMITTED = OutputTag("admitted", Types.PICKLED_BYTE_ARRAY())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rearm_if_lost(ctx: KeyedProcessFunction.Context, pending_ms: int, now_ms: int, grace_ms: int) -> int:
    """The timestamp of the pending timer, registered anew at `now_ms` if it is overdue by more than `grace_ms`.

    A timer that state says is pending but that has not fired long after its time
    was lost (seen with PyFlink's process mode after a restore); without this the
    key would wait forever. The new timestamp must differ from the lost one:
    registering an identical timer is a no-op in Flink. `on_timer` ignores the
    old one should it fire after all, because state names the new one.
    """
    if now_ms <= pending_ms + grace_ms:
        return pending_ms
    ctx.timer_service().register_processing_time_timer(now_ms)
    return now_ms


# --- reading -------------------------------------------------------------------


class PartitionFanOut(FlatMapFunction):  # type: ignore[misc]
    """Turns each tick into one poll request per partition; finds partitions added while running."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self._partitions: list[int] = []
        self._refreshed = 0.0

    def open(self, runtime_context: RuntimeContext) -> None:
        self._admin = AdminClient({"bootstrap.servers": self.settings.bootstrap_servers, "log_level": 3})

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


class KafkaPartitionReader(KeyedProcessFunction):  # type: ignore[misc]
    """Keyed by partition: reads the next records of that partition from the offset kept in Flink state.

    Decodes and validates each record; good events go downstream, bad ones to the
    DLQ side output. Offsets are committed to Kafka only so lag can be watched.
    """

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self._offset = runtime_context.get_state(ValueStateDescriptor("next_offset", Types.LONG()))
        self._consumers: dict[int, Any] = {}
        self._codec = EventCodec()
        self._committed = time.monotonic()
        metrics.serve(self.settings.metrics_port)

    def _consumer(self, partition: int, offset: int) -> Any:
        consumer = self._consumers.get(partition)
        if consumer is None:
            consumer = Consumer(
                {
                    "bootstrap.servers": self.settings.bootstrap_servers,
                    "group.id": self.settings.consumer_group,
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "fetch.wait.max.ms": 20,
                    "log_level": 3,
                }
            )
            consumer.assign([TopicPartition(self.settings.topic, partition, offset)])
            self._consumers[partition] = consumer
        return consumer

    def process_element(self, partition: int, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        next_offset = self._offset.value() or 0
        consumer = self._consumer(partition, next_offset)
        messages = consumer.consume(self.settings.max_records_per_poll, 0)
        if not messages:
            self._report_lag(consumer, partition, next_offset)
            return
        clock = now_ms()
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
                    yield decoded
                    continue
                decoded = rejection
            metrics.EVENTS.labels("invalid").inc()
            yield DLQ, DeadLetter(partition, offset, message.key(), message.value(), str(decoded), "invalid")
        self._offset.update(next_offset)
        self._report_lag(consumer, partition, next_offset)

    def _report_lag(self, consumer: Any, partition: int, next_offset: int) -> None:
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


# --- features ------------------------------------------------------------------


class _FeatureOperator(KeyedProcessFunction):  # type: ignore[misc]
    """Shared timer logic: coalesced flushes after changes, and expiry timers so windows age without events.

    A row's `as_of_ms` never goes backwards for a key; its Feast timestamp is the
    wall-clock time it was made, strictly increasing per key (Feast ignores a write
    that is not strictly newer), so a restored job always overwrites what a killed
    one wrote.
    """

    view = ""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self._state = runtime_context.get_state(ValueStateDescriptor("aggregate", Types.PICKLED_BYTE_ARRAY()))
        self._last_as_of = runtime_context.get_state(ValueStateDescriptor("last_as_of_ms", Types.LONG()))
        self._last_ts = runtime_context.get_state(ValueStateDescriptor("last_timestamp_us", Types.LONG()))
        self._flush_at = runtime_context.get_state(ValueStateDescriptor("flush_timer", Types.LONG()))
        self._expire_at = runtime_context.get_state(ValueStateDescriptor("expiry_timer", Types.LONG()))

    def _load(self) -> Any:
        raise NotImplementedError

    def _mark_dirty(self, ctx: KeyedProcessFunction.Context) -> None:
        now = ctx.timer_service().current_processing_time()
        pending = self._flush_at.value()
        if pending is None:
            at = now + self.settings.flush_interval_ms
            ctx.timer_service().register_processing_time_timer(at)
            self._flush_at.update(at)
        else:
            self._flush_at.update(rearm_if_lost(ctx, pending, now, self.settings.flush_interval_ms))

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[FeatureRow]:
        aggregate = self._load()
        newest = aggregate.newest_event_ms
        if newest is None:
            return
        last_as_of = self._last_as_of.value() or 0
        if timestamp == self._flush_at.value():
            self._flush_at.clear()
            as_of, newest_included = max(newest, last_as_of), newest
        elif timestamp == self._expire_at.value():
            self._expire_at.clear()
            # Windows age in event time; when the job runs behind, jump to now.
            as_of, newest_included = max(timestamp, last_as_of, min(now_ms(), newest + 86_400_000)), None
        else:
            return  # a timer replaced by a newer one
        yield self._row(ctx.get_current_key(), aggregate, as_of, newest_included)
        self._schedule_expiry(aggregate, as_of, ctx)

    def _row(self, key: str, aggregate: Any, as_of: int, newest_included: int | None) -> FeatureRow:
        # The Feast timestamp is the time the row was made, not as_of: after a restore the
        # rows a killed run wrote before dying may be newer in event time than what the
        # restored state emits next, and Feast would silently keep them.
        timestamp_us = max(time.time_ns() // 1000, (self._last_ts.value() or 0) + 1)
        self._last_ts.update(timestamp_us)
        self._last_as_of.update(as_of)
        return FeatureRow(self.view, key, aggregate.values(as_of), as_of, timestamp_us, newest_included)

    def _schedule_expiry(self, aggregate: Any, as_of: int, ctx: KeyedProcessFunction.Context) -> None:
        next_change = aggregate.next_change_ms(as_of)
        previous = self._expire_at.value()
        if next_change is None:
            return
        if previous is not None and next_change == previous:
            self._expire_at.update(rearm_if_lost(ctx, previous, ctx.timer_service().current_processing_time(), 1000))
            return
        if previous is not None:
            ctx.timer_service().delete_processing_time_timer(previous)
        ctx.timer_service().register_processing_time_timer(next_change)
        self._expire_at.update(next_change)


class UserFeaturesOperator(_FeatureOperator):
    """Keyed by user_id: admission (dedup, lateness) then user features; admitted events go on to items."""

    view = USER_VIEW

    def open(self, runtime_context: RuntimeContext) -> None:
        super().open(runtime_context)
        self._gate = runtime_context.get_state(ValueStateDescriptor("admission", Types.PICKLED_BYTE_ARRAY()))
        self._catalog = Catalog(self.settings.catalog_path)
        self._codec = EventCodec()

    def _load(self) -> UserFeatures:
        data = self._state.value()
        return UserFeatures.from_bytes(data) if data is not None else UserFeatures.empty()

    def process_element(self, event: InteractionEvent, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        data = self._gate.value()
        lateness = self.settings.lateness_ms
        gate = AdmissionGate.from_bytes(data, lateness) if data is not None else AdmissionGate(lateness)
        admission = gate.admit(event)
        self._gate.update(gate.to_bytes())
        metrics.EVENTS.labels(admission.value).inc()
        if admission is Admission.LATE:
            reason = f"late: event_time {event.event_time_ms} is more than {lateness} ms behind the user's newest"
            yield DLQ, DeadLetter(-1, -1, event.user_id.encode(), self._codec.encode(event), reason, "late")
            return
        if admission is Admission.DUPLICATE:
            return
        aggregate = self._load()
        aggregate.apply(event, self._catalog.category(event.item_id))
        self._state.update(aggregate.to_bytes())
        self._mark_dirty(ctx)
        yield ADMITTED, event


class ItemFeaturesOperator(_FeatureOperator):
    """Keyed by item_id: item features from admitted events."""

    view = ITEM_VIEW

    def _load(self) -> ItemFeatures:
        data = self._state.value()
        return ItemFeatures.from_bytes(data) if data is not None else ItemFeatures.empty()

    def process_element(self, event: InteractionEvent, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        aggregate = self._load()
        aggregate.apply(event)
        self._state.update(aggregate.to_bytes())
        self._mark_dirty(ctx)
        return iter(())


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


class OnlineStoreWriter(KeyedProcessFunction):  # type: ignore[misc]
    """Buffers rows in Flink list state and writes them in batches; blocks and retries while Redis is down.

    The buffer is keyed state, so rows waiting at a checkpoint are restored and
    written after a crash: nothing emitted is lost. Blocking on a down Redis
    is the backpressure: the readers stop reading until it is back.
    """

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self._buffer = runtime_context.get_list_state(ListStateDescriptor("rows", Types.PICKLED_BYTE_ARRAY()))
        self._count = runtime_context.get_state(ValueStateDescriptor("buffered", Types.LONG()))
        self._timer = runtime_context.get_state(ValueStateDescriptor("flush_timer", Types.LONG()))
        self._sink = OnlineStoreSink(self.settings.redis_address, self.settings.feast_registry)
        self._freshness = metrics.RecentFreshness(self.settings.freshness_window_s)
        self._retry(self._sink.open)
        metrics.serve(self.settings.metrics_port)

    def process_element(self, row: FeatureRow, ctx: KeyedProcessFunction.Context) -> Iterator[None]:
        self._buffer.add(pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL))
        count = (self._count.value() or 0) + 1
        self._count.update(count)
        now = ctx.timer_service().current_processing_time()
        pending = self._timer.value()
        if count >= self.settings.sink_batch_size:
            self._flush()
        elif pending is None:
            at = now + self.settings.sink_max_delay_ms
            ctx.timer_service().register_processing_time_timer(at)
            self._timer.update(at)
        else:
            self._timer.update(rearm_if_lost(ctx, pending, now, self.settings.sink_max_delay_ms))
        return iter(())  # a sink: PyFlink still wants an iterable back

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[None]:
        self._timer.clear()
        self._flush()
        return iter(())

    def _flush(self) -> None:
        rows: list[FeatureRow] = [pickle.loads(data) for data in self._buffer.get() or []]
        if rows:
            self._retry(lambda: self._sink.write(rows))
            written = now_ms()
            for row in rows:
                metrics.ROWS_WRITTEN.labels(row.view).inc()
                if row.newest_event_ms is not None:
                    self._freshness.observe(max(0, written - row.newest_event_ms) / 1000)
            self._freshness.publish()
        self._buffer.clear()
        self._count.clear()

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
        self._producer = Producer(
            {"bootstrap.servers": self.settings.bootstrap_servers, "enable.idempotence": True, "log_level": 3}
        )

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
