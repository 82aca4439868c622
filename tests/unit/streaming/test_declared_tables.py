"""Declared views in the per-poll logic: rows equal the pure replay, through resends, disorder and a restore."""

from __future__ import annotations

import dataclasses
import random

from feature_repo.layout import FeatureRow
from features.declared import AggregationSpec, DeclaredView, replay_declared
from features.definitions import WindowSpec
from features.events import EventType, InteractionEvent
from streaming.entities import MemoryStore
from streaming.partition import Layout, PartitionProcessor, ProcessorConfig
from streaming.testing import MemoryPartition, records_for
from tests.factories import NOW_MS

T0 = NOW_MS
CLICKS = DeclaredView(
    "user_clicks",
    "user_id",
    (
        AggregationSpec("count_item_id_60s", "item_id", "count", WindowSpec("60s", 60_000, 10_000), "int64"),
        AggregationSpec(
            "count_distinct_item_id_60s", "item_id", "count_distinct", WindowSpec("60s", 60_000, 10_000), "int64"
        ),
        AggregationSpec("max_position_30s", "position", "max", WindowSpec("30s", 30_000, 1_000), "int64"),
    ),
    event_types=frozenset({"click"}),
)


def events(seed: int, count: int = 300) -> list[InteractionEvent]:
    rng = random.Random(seed)
    out = []
    for n in range(count):
        t = T0 + n * 200 + rng.randrange(-3_000, 3_000)  # out of order within a few seconds
        kind = rng.choice([EventType.CLICK, EventType.IMPRESSION, EventType.VIEW])
        user = f"u{rng.randrange(6)}"
        out.append(InteractionEvent(f"e{n}", user, f"i{rng.randrange(9)}", kind, t, position=rng.randrange(20)))
    return out


def run_polls(
    memory: MemoryPartition, proc: PartitionProcessor, log: list[InteractionEvent], start_offset: int, now: int
) -> list[FeatureRow]:
    rows: list[FeatureRow] = []
    records = records_for(log, 1, first_offset=start_offset)[0]
    for start in range(0, len(records), 40):
        state = memory.state()
        result = proc.process(0, state, records[start : start + 40], now, Layout(1, 4))
        memory.save(state)
        rows += result.user_rows
        now += 150  # each poll past the flush interval: rows of the previous poll are due
    state = memory.state()
    rows += proc.process(0, state, [], now + 1_000, Layout(1, 4)).user_rows
    memory.save(state)
    return rows


def processor() -> PartitionProcessor:
    from features.codec import EventCodec

    config = ProcessorConfig(lateness_ms=300_000, max_skew_ms=60_000, max_dlq_value_bytes=65536)
    return PartitionProcessor(config, lambda item_id: None, EventCodec())


def newest_rows(rows: list[FeatureRow], view: str) -> dict[str, FeatureRow]:
    out: dict[str, FeatureRow] = {}
    for row in rows:
        if row.view == view:
            out[row.entity_id] = row
    return out


def test_declared_rows_equal_the_replay_with_resends_and_disorder_across_a_restore() -> None:
    log = events(1)
    rng = random.Random(2)
    resent = log + rng.sample(log, 40)  # resends: admission drops them
    first, second = resent[:200], resent[200:]
    memory = MemoryPartition(300_000, declared_views=(CLICKS,))
    now = T0 + 70_000
    rows = run_polls(memory, processor(), first, 0, now)
    # A restore: a new processor and new objects over the same stores (what Flink hands back).
    restored = dataclasses.replace(memory)
    rows += run_polls(restored, processor(), second, len(first), now + 10_000)
    latest = newest_rows(rows, CLICKS.name)
    clickers = {e.user_id for e in log if e.event_type is EventType.CLICK}
    assert set(latest) == clickers
    for user, row in latest.items():
        mine = [e for e in resent if e.user_id == user]
        assert row.values == replay_declared(CLICKS, mine, row.as_of_ms), user
    # The built-in view is still written for every user.
    assert set(newest_rows(rows, "user_stream_features")) == {e.user_id for e in log}


def test_a_changed_view_keeps_unchanged_state_and_says_what_is_new() -> None:
    memory = MemoryPartition(300_000, declared_views=(CLICKS,))
    run_polls(memory, processor(), events(3, 100), 0, T0 + 70_000)
    extra = AggregationSpec("min_position_60s", "position", "min", WindowSpec("60s", 60_000, 10_000), "int64")
    changed = dataclasses.replace(CLICKS, aggregations=(*CLICKS.aggregations[:2], extra))
    restored = dataclasses.replace(memory, declared_views=(changed,))
    state = restored.state()
    assert state.declared is not None
    (change,) = state.declared.changes
    assert "new and warming up ['min_position_60s']" in change and "max(position)" in change
    user = next(iter(k for k, _ in MemoryStore.items(restored.declared) if not k.endswith("specs")))
    aggregate = state.declared.tables[0][1].aggregate(user.split("\x00", 1)[1])
    assert aggregate.warming_up(T0 + 30_000) == ["min_position_60s"]
