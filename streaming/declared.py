"""The declared views of one entity kind under one Flink key: an `EntityTable` per view. No Flink import.

Each feature operator (users by partition, items by bucket) holds one
`DeclaredTables` beside its built-in table, so declared views get what the
built-ins get: coalesced rows, rows when windows age, eviction of idle entities,
and state in the operator's Flink keyed state, checkpointed with its offsets.
All views of a kind share one pair of MapStates; `PrefixedStore` keeps each
view's entries apart under a `<view>\\0` prefix.

A changed view (`feast apply` again, then a restart from the checkpoint): the
specs the state was built with are kept in the same store, and `changes` says,
per view, which aggregations were restored, which are new (empty, warming up
until one window has passed) and which were dropped. See
`features.declared.DeclaredFeatures.from_bytes` for the rule itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial

from feature_repo.layout import FeatureRow
from features.declared import DeclaredFeatures, DeclaredView
from features.events import InteractionEvent
from streaming.entities import CachedObjects, EntityTable, KeyValueStore, RowClock


def _decode(view: DeclaredView, data: bytes) -> DeclaredFeatures:
    return DeclaredFeatures.from_bytes(view, data)


_SPECS = "\x00specs"  # key of the identities a view's state was built with (never an entity id: ids are non-empty)


class PrefixedStore:
    """One view's part of a shared `KeyValueStore`."""

    def __init__(self, store: KeyValueStore, view: str) -> None:
        self.store = store
        self.prefix = view + "\x00"

    def get(self, key: str) -> bytes | None:
        return self.store.get(self.prefix + key)

    def put_all(self, entries: dict[str, bytes]) -> None:
        self.store.put_all({self.prefix + key: value for key, value in entries.items()})

    def items(self) -> Iterable[tuple[str, bytes]]:
        size = len(self.prefix)
        return [(key[size:], value) for key, value in self.store.items() if key.startswith(self.prefix)]

    def remove(self, key: str) -> None:
        self.store.remove(self.prefix + key)


class DeclaredTables:
    """Every declared view keyed by one entity kind, for the entities under one Flink key."""

    def __init__(
        self,
        views: Sequence[DeclaredView],
        store: KeyValueStore,
        schedules: KeyValueStore,
        flush_interval_ms: int,
        clock: RowClock,
        capacity: int = 1,
    ) -> None:
        self.views = tuple(views)
        self.tables: list[tuple[DeclaredView, EntityTable[DeclaredFeatures]]] = []
        self.changes: list[str] = []
        for view in self.views:
            own = PrefixedStore(store, view.name)
            objects = CachedObjects(own, partial(_decode, view), partial(DeclaredFeatures.empty, view), capacity)
            table = EntityTable(view.name, objects, PrefixedStore(schedules, view.name), flush_interval_ms, clock)
            self.tables.append((view, table))
            self._record_specs(view, own)

    def _record_specs(self, view: DeclaredView, store: PrefixedStore) -> None:
        now = [spec.identity for spec in view.aggregations]
        saved = store.get(_SPECS)
        if saved is not None:
            before = saved.decode().split("\n")
            new = [spec.name for spec in view.aggregations if spec.identity not in before]
            dropped = [identity for identity in before if identity not in now]
            if new or dropped:
                self.changes.append(
                    f"declared view {view.name} changed since its state was saved: restored "
                    f"{[spec.name for spec in view.aggregations if spec.identity in before]}, new and warming up "
                    f"{new}, dropped {dropped}"
                )
        if saved is None or saved.decode().split("\n") != now:
            store.put_all({_SPECS: "\n".join(now).encode()})

    def set_capacity(self, capacity: int) -> None:
        for _, table in self.tables:
            table.aggregates.capacity = capacity

    def apply(self, event: InteractionEvent, now_ms: int) -> None:
        """Fold one admitted event into every view whose filter keeps it."""
        for view, table in self.tables:
            key = event.user_id if view.entity_key == "user_id" else event.item_id
            if table.aggregate(key).apply(event):
                table.changed(key, now_ms, event.event_time_ms)

    def due_rows(self, now_ms: int) -> list[FeatureRow]:
        rows: list[FeatureRow] = []
        for _, table in self.tables:
            rows += table.due_rows(now_ms)
        return rows

    def next_due_ms(self) -> int | None:
        dues = [due for _, table in self.tables if (due := table.next_due_ms()) is not None]
        return min(dues) if dues else None

    def evict(self, clock_ms: int, after_ms: int) -> int:
        return sum(len(table.evict(clock_ms, after_ms)) for _, table in self.tables)

    def save(self) -> None:
        for _, table in self.tables:
            table.save()

    def __len__(self) -> int:
        return sum(len(table) for _, table in self.tables)
