"""EntityTable: coalesced rows, windows that age without events, and nothing owed forgotten across a restore."""

from __future__ import annotations

from features.events import EventType, InteractionEvent
from features.item import ItemFeatures, replay_item
from streaming.entities import CachedObjects, EntityTable, MemoryStore, RowClock

T0 = 1_790_000_000_000
FLUSH_MS = 100


def event(n: int, item: str, t: int, kind: EventType = EventType.IMPRESSION) -> InteractionEvent:
    return InteractionEvent(f"e{n}", "u1", item, kind, t)


class Stores:
    def __init__(self) -> None:
        self.items = MemoryStore()
        self.schedules = MemoryStore()

    def table(self, clock: RowClock | None = None, capacity: int = 1000) -> EntityTable[ItemFeatures]:
        """A table over these stores: a new one is what an operator builds after a restore."""
        cached = CachedObjects(self.items, ItemFeatures.from_bytes, ItemFeatures.empty, capacity)
        return EntityTable("item_view", cached, self.schedules, FLUSH_MS, clock or RowClock())


def apply(table: EntityTable[ItemFeatures], e: InteractionEvent, now: int) -> None:
    table.aggregate(e.item_id).apply(e)
    table.changed(e.item_id, now, e.event_time_ms)


def test_changes_within_the_flush_interval_make_one_row_with_all_of_them() -> None:
    table = Stores().table()
    events = [event(n, "i1", T0 + n) for n in range(5)]
    for n, e in enumerate(events):
        apply(table, e, now=T0 + 10 * n)
    assert table.due_rows(T0 + FLUSH_MS - 1) == []
    rows = table.due_rows(T0 + FLUSH_MS)
    assert len(rows) == 1
    row = rows[0]
    assert row.entity_id == "i1" and row.newest_event_ms == T0 + 4 and row.as_of_ms == T0 + 4
    assert row.values == replay_item(events, T0 + 4)


def test_windows_age_without_new_events() -> None:
    table = Stores().table()
    apply(table, event(1, "i1", T0), now=T0)
    (first,) = table.due_rows(T0 + FLUSH_MS)
    assert first.values["item_impressions_1h"] == 1
    due = table.next_due_ms()
    assert due is not None and due > first.as_of_ms
    aged = table.due_rows(T0 + 3_600_000 + 60_000)
    assert len(aged) == 1 and aged[0].newest_event_ms is None
    assert aged[0].values["item_impressions_1h"] == 0
    assert aged[0].values["item_impressions_24h"] == 1


def test_a_restored_table_emits_the_rows_the_lost_one_still_owed() -> None:
    stores = Stores()
    table = stores.table()
    apply(table, event(1, "i1", T0), now=T0)
    apply(table, event(2, "i2", T0), now=T0)
    table.save()  # what a checkpoint captures; the process then dies before the flush

    restored = stores.table()
    rows = restored.due_rows(T0 + 10 * FLUSH_MS)
    assert sorted(row.entity_id for row in rows) == ["i1", "i2"]
    assert all(row.newest_event_ms == T0 for row in rows)


def test_row_timestamps_increase_strictly_even_when_the_clock_stands_still() -> None:
    table = Stores().table(clock=RowClock(now_us=lambda: 5))
    for n in range(3):
        apply(table, event(n, f"i{n}", T0), now=T0)
    rows = table.due_rows(T0 + FLUSH_MS)
    assert [row.timestamp_us for row in rows] == [5, 6, 7]


def test_save_writes_each_changed_entity_once_per_call_and_evicts_only_saved_ones() -> None:
    stores = Stores()
    table = stores.table(capacity=2)
    for n in range(10):
        apply(table, event(n, f"i{n % 4}", T0 + n), now=T0)
    table.save()
    assert stores.items.put_calls == 1
    assert sorted(stores.items.data) == ["i0", "i1", "i2", "i3"]
    # Evicted entities come back from the store with every event they had.
    assert table.aggregate("i0").values(T0 + 10)["item_impressions_1h"] == 3
