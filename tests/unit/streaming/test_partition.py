"""PartitionProcessor: where every record of a poll ends, with no broker, Redis or Flink (streaming/testing.py)."""

from __future__ import annotations

import os

import pytest

from features.admission import EVICT_AFTER_MS
from features.codec import HEADER, EventCodec, SchemaLookupError
from features.events import EventType, InteractionEvent, Rejection
from features.partitioning import partition_for
from features.user import replay_user
from streaming.partition import (
    DEFAULT_ITEM_BUCKETS,
    MAX_REASON_BYTES,
    Layout,
    PartitionMeta,
    PartitionProcessor,
    PollResult,
    ProcessorConfig,
    layout_problem,
    running_layout,
)
from streaming.testing import FakeRecord, MemoryPartition, records_for
from tests.factories import avro_string_length

T0 = 1_795_000_000_000
LATENESS_MS = 300_000
MAX_DLQ_BYTES = 64 * 1024
CODEC = EventCodec()


def processor(**overrides: int) -> PartitionProcessor:
    config = ProcessorConfig(
        lateness_ms=LATENESS_MS,
        max_skew_ms=overrides.get("max_skew_ms", 60_000),
        max_dlq_value_bytes=MAX_DLQ_BYTES,
        evict_every_ms=overrides.get("evict_every_ms", 10_000),
    )
    return PartitionProcessor(config, lambda item_id: None, CODEC)


def poll(
    proc: PartitionProcessor, memory: MemoryPartition, records: list[FakeRecord], now_ms: int, count: int = 1
) -> PollResult:
    state = memory.state()
    result = proc.process(0, state, records, now_ms, Layout(count, 4))
    memory.save(state)
    return result


def view(n: int, user: str, t: int, kind: EventType = EventType.VIEW) -> InteractionEvent:
    return InteractionEvent(f"e{n}-{user}", user, f"i{n % 5}", kind, t, watch_ms=1000)


def outcomes(result: PollResult) -> int:
    return sum(result.counts.values())


def test_poison_records_go_to_the_dlq_bounded_and_good_events_after_them_still_count() -> None:
    invalid_utf8 = HEADER.pack(0, 1) + avro_string_length(250_000) + b"\xff" * 250_000
    random_body = HEADER.pack(0, 1) + os.urandom(900_000)
    garbage_framing = b"\x07" + os.urandom(1_000)
    good = [view(n, "u-good", T0 + n) for n in range(50)]
    records = [
        FakeRecord(0, b"u-bad", invalid_utf8, T0),
        FakeRecord(1, b"u-bad", random_body, T0),
        FakeRecord(2, b"u-bad", garbage_framing, T0),
    ] + [FakeRecord(3 + n, b"u-good", CODEC.encode(e), T0) for n, e in enumerate(good)]
    memory = MemoryPartition(LATENESS_MS)
    proc = processor()
    result = poll(proc, memory, records, T0 + 1_000)

    assert [letter.offset for letter in result.dead_letters] == [0, 1, 2]
    for letter in result.dead_letters:
        assert len(letter.reason.encode()) <= MAX_REASON_BYTES
        assert "\\xff" not in letter.reason and letter.reason.startswith("value:")
        assert len(letter.value or b"") <= MAX_DLQ_BYTES
    big = result.dead_letters[1]
    assert big.truncated and big.original_size == len(b"u-bad") + len(random_body)
    assert "UTF-8" in result.dead_letters[0].reason
    assert "magic byte" in result.dead_letters[2].reason
    assert result.counts == {"admitted": 50, "invalid": 3}
    later = poll(proc, memory, [], T0 + 2_000)
    rows = [row for row in later.user_rows if row.entity_id == "u-good"]
    assert rows and rows[0].values == replay_user(good, {}, rows[0].as_of_ms)


def test_a_record_whose_key_is_not_its_user_id_goes_to_the_dlq() -> None:
    event = view(1, "u1", T0)
    records = [
        FakeRecord(0, b"someone-else", CODEC.encode(event), T0),
        FakeRecord(1, None, CODEC.encode(view(2, "u1", T0)), T0),
    ]
    result = poll(processor(), MemoryPartition(LATENESS_MS), records, T0)
    reasons = [letter.reason for letter in result.dead_letters]
    assert reasons[0].startswith("key: differs from user_id")
    assert reasons[1].startswith("key: is missing")


def test_a_record_in_another_partition_than_murmur2_gives_its_key_goes_to_the_dlq() -> None:
    users = [f"u{n}" for n in range(40)]
    wrong = next(u for u in users if partition_for(u.encode(), 4) != 0)
    right = next(u for u in users if partition_for(u.encode(), 4) == 0)
    records = [
        FakeRecord(0, wrong.encode(), CODEC.encode(view(1, wrong, T0)), T0),
        FakeRecord(1, right.encode(), CODEC.encode(view(2, right, T0)), T0),
    ]
    result = poll(processor(), MemoryPartition(LATENESS_MS), records, T0, count=4)
    assert len(result.dead_letters) == 1
    assert "partitioner=murmur2_random" in result.dead_letters[0].reason
    assert result.counts == {"admitted": 1, "invalid": 1}


def test_one_event_from_a_clock_an_hour_ahead_does_not_make_the_users_next_events_late() -> None:
    skewed = view(0, "u1", T0 + 59 * 60_000)
    present = [view(n, "u1", T0 + n * 1_000) for n in range(1, 11)]
    records = [FakeRecord(n, b"u1", CODEC.encode(e), T0 + n * 1_000) for n, e in enumerate([skewed, *present])]
    result = poll(processor(), MemoryPartition(LATENESS_MS), records, T0 + 11_000)
    assert result.counts == {"admitted": 11}
    assert result.clamped == 1


def test_an_event_a_day_older_than_its_record_is_late_whatever_the_users_state() -> None:
    stale = view(1, "u1", T0 - 25 * 3_600_000)
    result = poll(processor(), MemoryPartition(LATENESS_MS), [FakeRecord(0, b"u1", CODEC.encode(stale), T0)], T0)
    assert result.counts == {"late": 1}
    assert result.dead_letters[0].kind == "late"


def test_records_below_the_saved_offset_are_not_processed_twice() -> None:
    records = records_for([view(n, "u1", T0 + n) for n in range(10)], 1)[0]
    memory, proc = MemoryPartition(LATENESS_MS), processor()
    poll(proc, memory, records[:6], T0)
    again = poll(proc, memory, records, T0 + 10)  # a restore re-reads from an older position
    assert again.counts == {"admitted": 4}


def test_a_layout_other_than_the_states_is_refused_with_what_to_do() -> None:
    saved = Layout(partitions=8, item_buckets=4)
    assert layout_problem(saved, Layout(8, 4)) is None
    more_partitions = layout_problem(saved, Layout(12, 4))
    assert more_partitions is not None and "12 partitions" in more_partitions and "built with 8" in more_partitions
    other_buckets = layout_problem(saved, Layout(8, 16))
    assert other_buckets is not None and "FRESHRANK_STREAM_ITEM_BUCKETS=4" in other_buckets
    assert Layout.from_bytes(saved.to_bytes()) == saved


def test_the_bucket_count_is_the_one_set_else_the_states_else_the_default() -> None:
    assert running_layout(None, 8, None) == Layout(8, DEFAULT_ITEM_BUCKETS)
    assert running_layout(None, 8, 16) == Layout(8, 16)
    # State of an earlier release (16 buckets by default) restores and reads on when nothing is set ...
    built_with_16 = Layout(8, 16)
    assert running_layout(built_with_16, 8, None) == built_with_16
    assert layout_problem(built_with_16, running_layout(built_with_16, 8, None)) is None
    # ... and a count set explicitly still has to match it.
    assert layout_problem(built_with_16, running_layout(built_with_16, 8, 4)) is not None
    assert running_layout(built_with_16, 12, None) == Layout(12, 16)


def test_a_recreated_topic_is_read_from_its_first_offset() -> None:
    meta = PartitionMeta(next_offset=500, clock_ms=T0)
    assert not meta.topic_recreated("id-1") and meta.next_offset == 500  # first id seen: just recorded
    assert not meta.topic_recreated("") and not meta.topic_recreated("id-1")  # unknown or same: nothing
    assert meta.topic_recreated("id-2") and meta.next_offset == 0
    assert PartitionMeta.from_bytes(meta.to_bytes()) == meta


def test_every_record_ends_in_exactly_one_place() -> None:
    events = [view(n % 30, f"u{n % 7}", T0 + (n * 7_919) % 400_000) for n in range(300)]  # resends, disorder
    logged = records_for(events, 1)[0]
    logged.insert(5, FakeRecord(0, b"u0", b"junk", T0))
    records = [FakeRecord(offset, r.key_, r.value_, r.timestamp_ms) for offset, r in enumerate(logged)]
    result = poll(processor(), MemoryPartition(LATENESS_MS), records, T0 + 500_000)
    assert outcomes(result) == len(records)
    refused = result.counts.get("late", 0) + result.counts.get("invalid", 0)
    assert len(result.dead_letters) == refused


@pytest.mark.parametrize("users", [200])
def test_idle_users_leave_state_and_come_back_with_the_same_features(users: int) -> None:
    """Eviction changes no value: a user evicted and seen again equals one never evicted."""
    memory, proc = MemoryPartition(LATENESS_MS, flush_interval_ms=1), processor(evict_every_ms=0)
    first = [view(n, f"u{n}", T0 + n) for n in range(users)]
    poll(proc, memory, records_for(first, 1)[0], T0 + 1_000)
    # Windows age and emit their last rows, then the partition's clock moves far on.
    for hours in range(1, 27):
        poll(proc, memory, [], T0 + hours * 3_600_000)
    later = T0 + EVICT_AFTER_MS + 60_000
    nudge = view(9_999, "u-new", later)
    result = poll(proc, memory, [FakeRecord(users, b"u-new", CODEC.encode(nudge), later)], later + 1)
    assert result.evicted == users
    assert len(memory.users.data) == len(memory.gates.data) == len(memory.schedules.data) == 1

    back = view(77, "u1", later + 5_000)
    poll(proc, memory, [FakeRecord(users + 1, b"u1", CODEC.encode(back), later + 5_000)], later + 6_000)
    rows = poll(proc, memory, [], later + 7_000).user_rows
    row = next(row for row in rows if row.entity_id == "u1")
    assert row.values == replay_user([first[1], back], {}, row.as_of_ms)


class RegistryAway(EventCodec):
    """A codec whose registry cannot be asked about the records it marks."""

    def decode(self, data: bytes | None) -> InteractionEvent | Rejection:
        if data is not None and data.startswith(b"\x00\x00\x01\x86\xa1"):  # schema id 100001
            raise SchemaLookupError("schema registry at http://registry: connection refused")
        return super().decode(data)


def test_a_record_whose_schema_cannot_be_looked_up_is_read_again_not_refused() -> None:
    good = [view(n, "u1", T0 + n) for n in range(3)]
    unknown = b"\x00\x00\x01\x86\xa1" + CODEC.encode(good[0])[5:]
    records = [FakeRecord(0, b"u1", CODEC.encode(good[0]), T0), FakeRecord(1, b"u1", unknown, T0)]
    records += [FakeRecord(2 + n, b"u1", CODEC.encode(e), T0) for n, e in enumerate(good[1:])]
    memory = MemoryPartition(LATENESS_MS)
    proc = PartitionProcessor(processor().config, lambda item_id: None, RegistryAway())
    result = poll(proc, memory, records, T0)
    assert result.stalled_at == 1 and "connection refused" in result.stall_reason
    assert result.counts == {"admitted": 1} and result.dead_letters == []
    assert PartitionMeta.from_bytes(memory.meta or b"").next_offset == 1  # the record is read again
