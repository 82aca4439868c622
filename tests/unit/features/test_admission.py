from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from features.admission import EVICT_AFTER_MS, STALE_MS, Admission, AdmissionGate, admitted_events, at_ingest
from tests.factories import NOW_MS, make_event


def test_first_copy_is_admitted_and_later_copies_are_duplicates() -> None:
    gate = AdmissionGate(lateness_ms=10_000)
    event = make_event()
    assert gate.admit(event) is Admission.ADMITTED
    assert gate.admit(event) is Admission.DUPLICATE


def test_events_older_than_the_bound_behind_the_newest_are_late() -> None:
    gate = AdmissionGate(lateness_ms=10_000)
    assert gate.admit(make_event(event_id="a", event_time_ms=NOW_MS)) is Admission.ADMITTED
    assert gate.admit(make_event(event_id="b", event_time_ms=NOW_MS - 10_000)) is Admission.ADMITTED
    assert gate.admit(make_event(event_id="c", event_time_ms=NOW_MS - 10_001)) is Admission.LATE


def test_a_duplicate_of_a_forgotten_event_is_late_not_counted_again() -> None:
    gate = AdmissionGate(lateness_ms=1_000)
    old = make_event(event_id="old", event_time_ms=NOW_MS)
    assert gate.admit(old) is Admission.ADMITTED
    for i in range(200):
        gate.admit(make_event(event_id=f"n{i}", event_time_ms=NOW_MS + 5_000 + i))
    assert len(gate) <= 200  # "old" and others beyond the bound were forgotten
    assert gate.admit(old) is Admission.LATE


def test_state_round_trips() -> None:
    gate = AdmissionGate(lateness_ms=60_000)
    for i in range(50):
        gate.admit(make_event(event_id=f"é{i}", event_time_ms=NOW_MS + (i * 7919) % 30_000))
    restored = AdmissionGate.from_bytes(gate.to_bytes(), lateness_ms=60_000)
    assert restored.newest_ms == gate.newest_ms and len(restored) == len(gate)
    for i in range(60):
        probe = make_event(event_id=f"é{i}", event_time_ms=NOW_MS + (i * 7919) % 30_000)
        assert restored.admit(probe) == AdmissionGate.from_bytes(gate.to_bytes(), 60_000).admit(probe)


def test_state_bytes_keep_their_layout() -> None:
    """Version 1, newest, count, then (event time, id length, utf-8 id) per id: what checkpoints already hold."""
    gate = AdmissionGate(lateness_ms=60_000)
    gate.admit(make_event(event_id="a", event_time_ms=5))
    gate.admit(make_event(event_id="é", event_time_ms=3))
    assert gate.to_bytes() == (
        b"\x01" + (5).to_bytes(8, "big") + (2).to_bytes(4, "big")
        + (5).to_bytes(8, "big") + b"\x00\x01a"
        + (3).to_bytes(8, "big") + b"\x00\x02" + "é".encode()
    )  # fmt: skip


@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 200_000)), min_size=1, max_size=150),
    st.sampled_from([1_000, 20_000, 300_000]),
)
def test_bytes_kept_as_ids_arrive_equal_the_bytes_of_the_whole_memory(
    events: list[tuple[int, int]], lateness_ms: int
) -> None:
    """The gate appends each admitted id's encoding instead of re-encoding its memory on every save; through
    admits, duplicates, late events and forgetting, the bytes must stay those of its memory encoded whole."""
    gate = AdmissionGate(lateness_ms)
    for n, t in events:
        gate.admit(make_event(event_id=f"e{n}-ü", event_time_ms=NOW_MS + t))
        restored = AdmissionGate.from_bytes(gate.to_bytes(), lateness_ms)
        assert restored.to_bytes() == gate.to_bytes()
        assert AdmissionGate(lateness_ms, gate.newest_ms, dict(gate._seen)).to_bytes() == gate.to_bytes()


@given(
    st.lists(st.integers(0, 120_000), min_size=1, max_size=120),
    st.integers(0, 2**32),
)
def test_admits_exactly_the_brute_force_definition(times: list[int], seed: int) -> None:
    """Brute force: keep every admitted event; late = older than max admitted - bound; dup = id admitted before.

    A duplicate is a byte-identical resend (same id, same time), as producers and clients make them.
    """
    rng = random.Random(seed)
    events = [make_event(event_id=f"e{i}", event_time_ms=NOW_MS + t) for i, t in enumerate(times)]
    for _ in range(len(events) // 3):  # resends, later in the log
        events.insert(rng.randrange(len(events) + 1), rng.choice(events))
    bound = 20_000
    expected, admitted_ids, newest = [], set(), None
    for event in events:
        if newest is not None and event.event_time_ms < newest - bound:
            continue
        if event.event_id in admitted_ids:
            continue
        admitted_ids.add(event.event_id)
        newest = event.event_time_ms if newest is None else max(newest, event.event_time_ms)
        expected.append(event)
    assert list(admitted_events(events, bound)) == expected


def test_the_replay_clamps_a_clock_skewed_event_as_the_job_does() -> None:
    """One event an hour ahead of its record timestamp must not make the user's next events late."""
    skewed = make_event(event_id="ahead", event_time_ms=NOW_MS + 59 * 60_000)
    present = [make_event(event_id=f"p{i}", event_time_ms=NOW_MS + i) for i in range(10)]
    ingest = [NOW_MS] * 11
    admitted = list(admitted_events([skewed, *present], 300_000, ingest, max_skew_ms=60_000))
    assert len(admitted) == 11
    assert admitted[0].event_time_ms == NOW_MS + 60_000  # clamped to ingest + max skew
    assert list(admitted_events([skewed, *present], 300_000)) == [skewed]  # without ingest times: late


def test_an_event_a_day_older_than_its_ingest_time_is_late_and_leaves_no_trace() -> None:
    stale = make_event(event_id="old", event_time_ms=NOW_MS - STALE_MS - 1)
    gate = AdmissionGate(lateness_ms=300_000)
    assert gate.admit(stale, ingest_ms=NOW_MS) is Admission.LATE
    assert gate.newest_ms is None and len(gate) == 0
    assert at_ingest(stale, NOW_MS, 60_000) is None
    assert at_ingest(stale, None, 60_000) is stale


def test_a_gate_is_evictable_only_long_after_its_newest_event() -> None:
    gate = AdmissionGate(lateness_ms=300_000)
    gate.admit(make_event(event_time_ms=NOW_MS))
    assert not gate.evictable(NOW_MS + EVICT_AFTER_MS)
    assert gate.evictable(NOW_MS + EVICT_AFTER_MS + 1)
