"""Test doubles of the stream job's edges, shipped with the code (as bytewax ships `testing.py`).

`FakeRecord` stands in for a confluent_kafka.Message and `memory_state` builds a
partition's state over `MemoryStore`s (the double of Flink MapState), so the
per-poll logic of streaming/partition.py runs in unit tests with no broker,
no Redis and no Flink. A new `memory_state` over the same stores is what an
operator builds after a restore.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from feature_repo.definitions import USER_VIEW
from features.admission import AdmissionGate
from features.codec import EventCodec
from features.declared import DeclaredView
from features.events import InteractionEvent
from features.partitioning import partition_for
from features.user import UserFeatures
from streaming.declared import DeclaredTables
from streaming.entities import CachedObjects, EntityTable, MemoryStore, RowClock
from streaming.partition import PartitionMeta, PartitionState

# confluent_kafka.TIMESTAMP_CREATE_TIME
CREATE_TIME = 1


@dataclass(frozen=True)
class FakeRecord:
    """What the processor reads of a Kafka message."""

    offset_: int
    key_: bytes | None
    value_: bytes | None
    timestamp_ms: int | None = None

    def error(self) -> Any:
        return None

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def timestamp(self) -> tuple[int, int]:
        return (0, -1) if self.timestamp_ms is None else (CREATE_TIME, self.timestamp_ms)


@dataclass
class MemoryPartition:
    """The keyed state of one partition, in dicts; `state()` opens it as an operator does."""

    lateness_ms: int
    flush_interval_ms: int = 100
    cache_size: int = 1000
    meta: bytes | None = None
    gates: MemoryStore = field(default_factory=MemoryStore)
    users: MemoryStore = field(default_factory=MemoryStore)
    schedules: MemoryStore = field(default_factory=MemoryStore)
    clock: RowClock = field(default_factory=RowClock)
    declared_views: tuple[DeclaredView, ...] = ()
    declared: MemoryStore = field(default_factory=MemoryStore)
    declared_schedules: MemoryStore = field(default_factory=MemoryStore)

    def state(self) -> PartitionState:
        lateness = self.lateness_ms
        meta = PartitionMeta.from_bytes(self.meta) if self.meta is not None else PartitionMeta()
        gates = CachedObjects(
            self.gates,
            lambda data: AdmissionGate.from_bytes(data, lateness),
            lambda: AdmissionGate(lateness),
            self.cache_size,
        )
        users = CachedObjects(self.users, UserFeatures.from_bytes, UserFeatures.empty, self.cache_size)
        table = EntityTable(USER_VIEW, users, self.schedules, self.flush_interval_ms, self.clock)
        declared = None
        if self.declared_views:
            declared = DeclaredTables(
                self.declared_views, self.declared, self.declared_schedules, self.flush_interval_ms, self.clock
            )
        return PartitionState(meta, gates, table, declared)

    def save(self, state: PartitionState) -> None:
        self.meta = state.save()


def records_for(
    events: list[InteractionEvent], partition_count: int, first_offset: int = 0, ingest_ms: int | None = None
) -> dict[int, list[FakeRecord]]:
    """Events encoded and spread over partitions as Kafka's default partitioner would, keyed by user_id."""
    codec = EventCodec()
    out: dict[int, list[FakeRecord]] = {}
    for event in events:
        key = event.user_id.encode()
        partition = out.setdefault(partition_for(key, partition_count), [])
        stamp = event.event_time_ms if ingest_ms is None else ingest_ms
        partition.append(FakeRecord(first_offset + len(partition), key, codec.encode(event), stamp))
    return out
