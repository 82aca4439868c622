"""What the stream job does with one poll of one Kafka partition: plain Python, no Flink, no I/O.

`PartitionProcessor.process` takes the records a poll read and the partition's
state, and decides where every record ends: admitted into the user features,
a duplicate, late, or a `DeadLetter` with a bounded reason. It returns the user
rows now due, the admitted events grouped by item bucket, and the dead letters;
the Flink function (streaming/operators.py) writes the dead letters and waits
for their delivery reports *before* it saves the state and emits the rest, so
a record is never lost between the two.

Rules (each has a unit test in tests/unit/streaming/test_partition.py):
- Every record ends in exactly one place; a record at an offset below the
  state's next offset (re-read after a restore) is skipped as already done. A
  record whose writer schema cannot be looked up (registry away) stops the poll
  before it (`stalled_at`): it is read again later, never sent to the DLQ.
- A dead letter's reason names the field and the rule and is at most
  `MAX_REASON_BYTES`; it never quotes the payload. A value (or key) too large
  for the DLQ is cut to `max_dlq_value_bytes`, and the letter says so.
- The record key must equal the event's user_id, and the record must sit in the
  partition Kafka's default partitioner (murmur2, features/partitioning.py)
  gives that key: per-user order and state rest on both (a record breaking
  either goes to the DLQ, naming the producer setting to fix).
- Event time is clamped to ingest time + max skew, then admitted per user
  (features/admission.py); the partition clock (newest record timestamp)
  drives the eviction of idle users.
- The state's layout (partition count, item buckets) must match the running
  job's; a mismatch halts the partition with a reason (users would otherwise
  be split over two partitions' states).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

from feature_repo.layout import FeatureRow
from features.admission import EVICT_AFTER_MS, Admission, AdmissionGate, clamp_to_ingest
from features.codec import EventCodec, SchemaLookupError
from features.events import InteractionEvent, Rejection, validate
from features.partitioning import LIBRDKAFKA_PARTITIONER, partition_for
from features.user import UserFeatures
from streaming.declared import DeclaredTables
from streaming.entities import CachedObjects, EntityTable

MAX_REASON_BYTES = 1024

# Kafka's timestamp types (confluent_kafka.TIMESTAMP_*): 0 means the record has none.
_TIMESTAMP_NOT_AVAILABLE = 0

# Elements crossing operators are pickled; a frozen slots dataclass unpickles through
# dataclasses.fields() per object (a tenth of the job's time in a profile), a tuple does not.
EventFields = tuple[Any, ...]
event_fields = attrgetter(*(f.name for f in fields(InteractionEvent)))


class Record(Protocol):
    """What the processor reads of a confluent_kafka.Message."""

    def error(self) -> Any: ...

    def offset(self) -> int: ...

    def key(self) -> bytes | None: ...

    def value(self) -> bytes | None: ...

    def timestamp(self) -> tuple[int, int]: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record refused by the job: where it came from, why, and how much of it is kept."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    kind: str  # invalid | late
    original_size: int
    truncated: bool


def bounded(text: str, limit: int = MAX_REASON_BYTES) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (on a character boundary)."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


def dead_letter(
    partition: int, offset: int, key: bytes | None, value: bytes | None, reason: str, kind: str, max_bytes: int
) -> DeadLetter:
    size = (len(key) if key else 0) + (len(value) if value else 0)
    truncated = size > max_bytes
    if truncated:
        key = key[: min(len(key), 1024)] if key else key
        value = value[: max(0, max_bytes - (len(key) if key else 0))] if value else value
    return DeadLetter(partition, offset, key, value, bounded(reason), kind, size, truncated)


def item_bucket(item_id: str, buckets: int) -> int:
    return zlib.crc32(item_id.encode()) % buckets


class ItemBatch(NamedTuple):
    """Admitted events of one poll whose items fall in one bucket, and the clock of the partition they came from."""

    bucket: int
    events: list[EventFields]
    partition: int
    partition_clock_ms: int


_META = struct.Struct("<qq")


@dataclass(slots=True)
class PartitionMeta:
    """Per-partition bookkeeping kept in state beside the entities."""

    next_offset: int = 0
    clock_ms: int = 0  # the newest record timestamp read: the partition's ingest clock
    topic_id: str = ""  # the topic's id when this state read it ("" if the broker gives none)

    def to_bytes(self) -> bytes:
        return _META.pack(self.next_offset, self.clock_ms) + self.topic_id.encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> PartitionMeta:
        next_offset, clock_ms = _META.unpack_from(data)
        return cls(next_offset, clock_ms, data[_META.size :].decode())

    def topic_recreated(self, topic_id: str) -> bool:
        """Record `topic_id`; True if the state read a topic of the same name but another id (offsets restart at 0)."""
        if not topic_id or topic_id == self.topic_id:
            return False
        recreated = bool(self.topic_id)
        self.topic_id = topic_id
        if recreated:
            self.next_offset = 0
        return recreated


_LAYOUT = struct.Struct("<ii")

# Item buckets of new state when FRESHRANK_STREAM_ITEM_BUCKETS is not set. Every poll sends one element per
# bucket with events to the item operator, and each costs a Flink crossing, state writes, a timer and a Redis
# write there; in the mini-cluster both operators share one Python interpreter, so that per-batch cost is
# paid in freshness: at 5,000 events/s, 16 buckets gave a p99 of 1.05-1.12 s, 4 buckets 0.51-0.54 s (README,
# "Where it stands: four item buckets"). The item operator's parallelism cannot usefully exceed the bucket
# count: set more for a cluster that will scale out further.
DEFAULT_ITEM_BUCKETS = 4


@dataclass(frozen=True, slots=True)
class Layout:
    """How users and items are spread over Flink keys: fixed for the life of the job's state."""

    partitions: int
    item_buckets: int

    def to_bytes(self) -> bytes:
        return _LAYOUT.pack(self.partitions, self.item_buckets)

    @classmethod
    def from_bytes(cls, data: bytes) -> Layout:
        return cls(*_LAYOUT.unpack(data))


def running_layout(saved: Layout | None, partitions: int, item_buckets: int | None) -> Layout:
    """The layout to run with: the topic's partition count; the bucket count set, else the state's, else the default.

    Taking the state's count when none is set lets a job whose state was built with another default
    (16 in earlier releases) restore and read on instead of stopping on a layout mismatch.
    """
    if item_buckets is None:
        item_buckets = saved.item_buckets if saved is not None else DEFAULT_ITEM_BUCKETS
    return Layout(partitions, item_buckets)


def layout_problem(saved: Layout, running: Layout) -> str | None:
    """Why state built with `saved` cannot be used with `running`, or None.

    A user's partition is murmur2(user_id) % partitions and an item's bucket is
    crc32(item_id) % item_buckets: with another count, an entity's new events go
    to a key that does not hold its gate and aggregates, while the old key keeps
    writing its rows. Moving state between keys is not supported; the job stops
    reading instead (see README, "Changing partitions or item buckets").
    """
    if saved.partitions != running.partitions:
        return (
            f"the topic has {running.partitions} partitions but the job's state was built with "
            f"{saved.partitions}: users would be split over two partitions' state. Start the job with empty "
            "state on a new topic and replay (README: 'Changing partitions or item buckets')"
        )
    if saved.item_buckets != running.item_buckets:
        return (
            f"item_buckets is {running.item_buckets} but the job's state was built with {saved.item_buckets}: "
            f"set FRESHRANK_STREAM_ITEM_BUCKETS={saved.item_buckets}, or start with empty state and replay"
        )
    return None


@dataclass
class PartitionState:
    """One partition's state: its meta, the users' admission gates and their feature table."""

    meta: PartitionMeta
    gates: CachedObjects[AdmissionGate]
    users: EntityTable[UserFeatures]
    # Declared views keyed by user_id (features/declared.py), fed the same admitted events.
    declared: DeclaredTables | None = None

    def save(self) -> bytes:
        """Write gates and users to their stores; returns the meta bytes for the caller's value state."""
        self.gates.save(lambda gate: gate.to_bytes())
        self.users.save()
        if self.declared is not None:
            self.declared.save()
        return self.meta.to_bytes()

    def next_due_ms(self) -> int | None:
        """The earliest time a user row (built-in or declared) is owed."""
        due = self.users.next_due_ms()
        other = self.declared.next_due_ms() if self.declared is not None else None
        return other if due is None else due if other is None else min(due, other)

    def due_rows(self, now_ms: int) -> list[FeatureRow]:
        rows = self.users.due_rows(now_ms)
        if self.declared is not None:
            rows += self.declared.due_rows(now_ms)
        return rows


@dataclass
class PollResult:
    """Where the records of one poll went, and what the poll owes downstream."""

    user_rows: list[FeatureRow] = field(default_factory=list)
    item_batches: dict[int, list[EventFields]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    clamped: int = 0
    evicted: int = 0
    # Set when the schema registry could not be asked: the poll stopped before this offset, to be read again.
    stalled_at: int | None = None
    stall_reason: str = ""


@dataclass(frozen=True)
class ProcessorConfig:
    lateness_ms: int
    max_skew_ms: int
    max_dlq_value_bytes: int
    evict_every_ms: int = 10_000


class PartitionProcessor:
    """Decode, validate, key check, clamp, admit, user features, route to item buckets; see the module docstring."""

    def __init__(self, config: ProcessorConfig, category: Callable[[str], str | None], codec: EventCodec) -> None:
        self.config = config
        self.category = category
        self.codec = codec
        self._evicted_at: dict[int, int] = {}

    def process(
        self, partition: int, state: PartitionState, records: list[Record], now_ms: int, layout: Layout
    ) -> PollResult:
        result = PollResult()
        config = self.config
        meta = state.meta
        gates, users, declared = state.gates, state.users, state.declared
        counts = {Admission.ADMITTED: 0, Admission.DUPLICATE: 0, Admission.LATE: 0}
        invalid = 0
        by_bucket = result.item_batches
        letters = result.dead_letters
        max_bytes = config.max_dlq_value_bytes
        for record in records:
            if record.error() is not None:
                continue  # the reader handles partition errors before handing records over
            offset = record.offset()
            if offset < meta.next_offset:
                continue  # already processed before a restore
            key, value = record.key(), record.value()
            try:
                decoded = self.codec.decode(value)
            except SchemaLookupError as error:  # the registry is away: not the record's fault, read it again
                result.stalled_at, result.stall_reason = offset, str(error)[:MAX_REASON_BYTES]
                break
            meta.next_offset = offset + 1
            kind, stamp = record.timestamp()
            ingest_ms = stamp if kind != _TIMESTAMP_NOT_AVAILABLE and stamp > 0 else None
            if ingest_ms is not None and ingest_ms > meta.clock_ms:
                meta.clock_ms = ingest_ms
            if isinstance(decoded, InteractionEvent):
                rejection = (
                    validate(decoded, now_ms)
                    or _key_mismatch(key, decoded)
                    or _wrong_partition(key, partition, layout.partitions)
                )
                if rejection is None:
                    event = clamp_to_ingest(decoded, ingest_ms, config.max_skew_ms)
                    if event is not decoded:
                        result.clamped += 1
                    user_id = event.user_id
                    gate = gates.get(user_id)
                    admission = gate.admit(event, ingest_ms)
                    counts[admission] += 1
                    if admission is Admission.DUPLICATE:
                        continue
                    gates.changed(user_id)
                    if admission is Admission.LATE:
                        reason = (
                            f"event_time: {event.event_time_ms} is more than {config.lateness_ms} ms behind the "
                            "user's newest event, or a day older than the record's timestamp (late)"
                        )
                        letters.append(dead_letter(partition, offset, key, value, reason, "late", max_bytes))
                        continue
                    users.aggregate(user_id).apply(event, self.category(event.item_id))
                    users.changed(user_id, now_ms, event.event_time_ms)
                    if declared is not None:
                        declared.apply(event, now_ms)
                    by_bucket.setdefault(item_bucket(event.item_id, layout.item_buckets), []).append(
                        event_fields(event)
                    )
                    continue
                decoded = rejection
            invalid += 1
            letters.append(dead_letter(partition, offset, key, value, str(decoded), "invalid", max_bytes))
        result.counts = {admission.value: count for admission, count in counts.items() if count}
        if invalid:
            result.counts["invalid"] = invalid
        result.user_rows = state.due_rows(now_ms)
        result.evicted = self._evict(partition, state, now_ms)
        return result

    def _evict(self, partition: int, state: PartitionState, now_ms: int) -> int:
        """Every `evict_every_ms`, drop the users idle for EVICT_AFTER_MS of partition clock (gates too)."""
        if now_ms - self._evicted_at.get(partition, 0) < self.config.evict_every_ms:
            return 0
        self._evicted_at[partition] = now_ms
        gone = state.users.evict(state.meta.clock_ms, EVICT_AFTER_MS)
        if gone:
            state.gates.remove(gone)
        if state.declared is not None:
            state.declared.evict(state.meta.clock_ms, EVICT_AFTER_MS)
        return len(gone)


def _key_mismatch(key: bytes | None, event: InteractionEvent) -> Rejection | None:
    if key is None:
        return Rejection("key", "is missing: records on the topic are keyed by user_id")
    if key != event.user_id.encode():
        return Rejection(
            "key",
            "differs from user_id: records must be keyed by user_id so a user's events share one partition",
        )
    return None


def _wrong_partition(key: bytes | None, partition: int, partition_count: int) -> Rejection | None:
    expected = partition_for(key, partition_count) if key else partition
    if expected == partition:
        return None
    return Rejection(
        "key",
        f"hashes to partition {expected} of {partition_count} with Kafka's default partitioner (murmur2) but the "
        f"record is in partition {partition}: configure the producer with partitioner={LIBRDKAFKA_PARTITIONER} "
        "(librdkafka) or the Java client's default, so a user's events share one partition",
    )
