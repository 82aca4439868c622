"""Many entities' aggregates under one Flink key, with coalesced rows and expiry. No Flink import.

The stream job keys its operators by Kafka partition (users: the topic is keyed
by user_id, so a user lives in one partition) and by item bucket, not by entity:
one Flink key per entity costs several JVM crossings per event in PyFlink
(state reads, state writes, timers, one element per event), and those
crossings, not the feature code, bounded the job. An `EntityTable` holds the
entities of one such key, so an operator loads and stores a whole poll's worth
of them with one state call each way.

What a table guarantees (tested in tests/unit/streaming/test_entities.py):

- Coalescing: an entity changed by an event emits one row `flush_interval_ms`
  after its first change not yet emitted, with every change up to then: at
  most one row per entity per interval.
- Windows age without events: after each row the entity is scheduled at
  `aggregate.next_change_ms(as_of)` and emits a row then.
- Nothing owed is forgotten: the schedule (pending flush, expiry, last as_of)
  is stored beside the aggregates, so a job restored from a checkpoint emits
  every row the killed one still owed, with no new event needed.
- Rows carry a Feast timestamp that is the wall-clock time they were made and
  strictly increases per table: Feast keeps a write only if it is strictly
  newer, so a restored job always overwrites what a killed one wrote.
- Bounded: `evict(clock_ms, after_ms)` removes every entity that owes no row and
  whose newest event is more than `after_ms` behind `clock_ms` from the cache,
  the schedules and the stores (see features.admission.EVICT_AFTER_MS for why
  that changes no later value).
"""

from __future__ import annotations

import heapq
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from feature_repo.layout import FeatureRow
from features.definitions import DAY_MS, FeatureValue


class KeyValueStore(Protocol):
    """What a table needs from Flink MapState (string keys, bytes values)."""

    def get(self, key: str) -> bytes | None: ...

    def put_all(self, entries: dict[str, bytes]) -> None: ...

    def items(self) -> Iterable[tuple[str, bytes]]: ...

    def remove(self, key: str) -> None: ...


class MemoryStore:
    """A dict as a `KeyValueStore`: the test double of Flink MapState."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.put_calls = 0

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put_all(self, entries: dict[str, bytes]) -> None:
        self.put_calls += 1
        self.data.update(entries)

    def items(self) -> Iterable[tuple[str, bytes]]:
        return list(self.data.items())

    def remove(self, key: str) -> None:
        self.data.pop(key, None)


class Aggregate(Protocol):
    """What features/user.py and features/item.py aggregators offer."""

    @property
    def newest_event_ms(self) -> int | None: ...

    def values(self, as_of_ms: int) -> Mapping[str, FeatureValue | None]: ...

    def next_change_ms(self, as_of_ms: int) -> int | None: ...

    def to_bytes(self) -> bytes: ...


T = TypeVar("T")


class CachedObjects(Generic[T]):
    """Decoded objects in front of a `KeyValueStore`: read once, written back by `save()` when changed.

    The cache keeps at most `capacity` objects; only saved ones are evicted, so the
    store always holds what the cache would. `capacity` may be changed at any time
    (the operator splits one per-process budget over the tables it holds).
    """

    def __init__(
        self, store: KeyValueStore, decode: Callable[[bytes], T], create: Callable[[], T], capacity: int
    ) -> None:
        self.store = store
        self.decode = decode
        self.create = create
        self.capacity = capacity
        self._cache: OrderedDict[str, T] = OrderedDict()
        self._changed: set[str] = set()

    def get(self, key: str) -> T:
        value = self._cache.get(key)
        if value is None:
            data = self.store.get(key)
            value = self.decode(data) if data is not None else self.create()
            self._cache[key] = value
        else:
            self._cache.move_to_end(key)
        return value

    def changed(self, key: str) -> None:
        self._changed.add(key)

    def save(self, encode: Callable[[T], bytes]) -> None:
        if self._changed:
            self.store.put_all({key: encode(self._cache[key]) for key in self._changed})
            self._changed.clear()
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)

    def remove(self, keys: list[str]) -> None:
        """Forget `keys` in the cache and the store (they must not be changed and unsaved)."""
        for key in keys:
            self._cache.pop(key, None)
            self._changed.discard(key)
            self.store.remove(key)

    def __len__(self) -> int:
        return len(self._cache)


_SCHEDULE = struct.Struct("<qqqq")
_SCHEDULE_V1 = struct.Struct("<qqq")
_NONE = -1


@dataclass(slots=True)
class Schedule:
    """When an entity owes a row (a pending flush, the next window change), its last as_of and newest event."""

    flush_due_ms: int | None = None
    expire_at_ms: int | None = None
    last_as_of_ms: int = 0
    newest_event_ms: int = 0

    def due_ms(self) -> int | None:
        if self.flush_due_ms is None:
            return self.expire_at_ms
        if self.expire_at_ms is None:
            return self.flush_due_ms
        return min(self.flush_due_ms, self.expire_at_ms)

    def to_bytes(self) -> bytes:
        flush = _NONE if self.flush_due_ms is None else self.flush_due_ms
        expire = _NONE if self.expire_at_ms is None else self.expire_at_ms
        return _SCHEDULE.pack(flush, expire, self.last_as_of_ms, self.newest_event_ms)

    @classmethod
    def from_bytes(cls, data: bytes) -> Schedule:
        if (
            len(data) == _SCHEDULE_V1.size
        ):  # state of a job before eviction: its last row stands in for the newest event
            flush, expire, last_as_of = _SCHEDULE_V1.unpack(data)
            return cls(None if flush == _NONE else flush, None if expire == _NONE else expire, last_as_of, last_as_of)
        flush, expire, last_as_of, newest = _SCHEDULE.unpack(data)
        return cls(None if flush == _NONE else flush, None if expire == _NONE else expire, last_as_of, newest)


class RowClock:
    """Wall-clock microseconds, strictly increasing across calls."""

    def __init__(self, now_us: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        self.now_us = now_us
        self._last = 0

    def __call__(self) -> int:
        self._last = max(self.now_us(), self._last + 1)
        return self._last


A = TypeVar("A", bound=Aggregate)


class EntityTable(Generic[A]):
    """The aggregates and row schedule of every entity under one Flink key; see the module docstring."""

    def __init__(
        self,
        view: str,
        aggregates: CachedObjects[A],
        schedules: KeyValueStore,
        flush_interval_ms: int,
        clock: RowClock,
    ) -> None:
        self.view = view
        self.aggregates = aggregates
        self.schedules_store = schedules
        self.flush_interval_ms = flush_interval_ms
        self.clock = clock
        # Schedules are small: all of them stay in memory, loaded once (after a restore, too).
        self._schedules = {key: Schedule.from_bytes(data) for key, data in schedules.items()}
        self._heap: list[tuple[int, str]] = []
        for key, schedule in self._schedules.items():
            due = schedule.due_ms()
            if due is not None:
                self._heap.append((due, key))
        heapq.heapify(self._heap)
        self._changed_schedules: set[str] = set()

    def aggregate(self, key: str) -> A:
        return self.aggregates.get(key)

    def changed(self, key: str, now_ms: int, event_time_ms: int) -> None:
        """Record that an event at `event_time_ms` changed `key`'s aggregate at processing time `now_ms`."""
        self.aggregates.changed(key)
        schedule = self._schedules.get(key)
        if schedule is None:
            schedule = self._schedules[key] = Schedule()
        if event_time_ms > schedule.newest_event_ms:
            schedule.newest_event_ms = event_time_ms
            self._changed_schedules.add(key)
        if schedule.flush_due_ms is None:
            schedule.flush_due_ms = now_ms + self.flush_interval_ms
            self._changed_schedules.add(key)
            heapq.heappush(self._heap, (schedule.flush_due_ms, key))

    def next_due_ms(self) -> int | None:
        """The earliest time some entity owes a row (stale heap entries may make it early, never late)."""
        return self._heap[0][0] if self._heap else None

    def due_rows(self, now_ms: int) -> list[FeatureRow]:
        """The rows owed by `now_ms`: flushes of new events and rows of windows that aged."""
        rows: list[FeatureRow] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            due, key = heapq.heappop(heap)
            schedule = self._schedules[key]
            if schedule.due_ms() != due:
                continue  # superseded by a newer entry for the same key
            aggregate = self.aggregates.get(key)
            newest = aggregate.newest_event_ms
            if newest is None:
                schedule.flush_due_ms = schedule.expire_at_ms = None
                self._changed_schedules.add(key)
                continue
            if schedule.flush_due_ms is not None:
                as_of, included = max(newest, schedule.last_as_of_ms), newest
            else:
                # Windows age in event time; when the job runs behind, jump to now (at most a day on).
                as_of = max(due, schedule.last_as_of_ms, min(now_ms, newest + DAY_MS))
                included = None
            rows.append(FeatureRow(self.view, key, aggregate.values(as_of), as_of, self.clock(), included))
            schedule.flush_due_ms = None
            schedule.last_as_of_ms = as_of
            expire = aggregate.next_change_ms(as_of)
            # A change already past (the job runs behind) is owed from the next call on, not
            # now: two rows for one entity in one batch would break the coalescing.
            schedule.expire_at_ms = None if expire is None else max(expire, now_ms + 1, as_of + 1)
            if schedule.expire_at_ms is not None:
                heapq.heappush(heap, (schedule.expire_at_ms, key))
            self._changed_schedules.add(key)
        return rows

    def evict(self, clock_ms: int, after_ms: int) -> list[str]:
        """Remove every entity that owes no row and whose newest event is over `after_ms` behind `clock_ms`."""
        gone = [
            key
            for key, schedule in self._schedules.items()
            if schedule.due_ms() is None and clock_ms - schedule.newest_event_ms > after_ms
        ]
        if gone:
            for key in gone:
                del self._schedules[key]
                self._changed_schedules.discard(key)
            self.aggregates.remove(gone)
            for key in gone:
                self.schedules_store.remove(key)
        return gone

    def __len__(self) -> int:
        return len(self._schedules)

    def save(self) -> None:
        """Write every changed aggregate and schedule to the stores (call before returning to Flink)."""
        self.aggregates.save(lambda aggregate: aggregate.to_bytes())
        if self._changed_schedules:
            self.schedules_store.put_all({key: self._schedules[key].to_bytes() for key in self._changed_schedules})
            self._changed_schedules.clear()
