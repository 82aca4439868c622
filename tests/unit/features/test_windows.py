"""The bucketed sliding windows against a brute-force reference of their documented definition."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.definitions import AFFINITY_DECAY, AFFINITY_WINDOW, USER_WINDOWS, WindowSpec
from features.windows import (
    KeyedWindowCounter,
    SlidingWindowCounter,
    StateFormatError,
    StateReader,
    StateWriter,
)

T0 = 1_795_000_000_000
SMALL = WindowSpec("1m", 60_000, 10_000)  # 6 buckets: collisions and expiry on every example
WIDTH = 3


@dataclass(frozen=True)
class Add:
    time_ms: int
    deltas: tuple[tuple[int, int], ...]


def counted(adds: list[Add], spec: WindowSpec, as_of_ms: int) -> list[Add]:
    """The documented definition: as of t, count events with floor(e / b) > max(floor(t / b), h) - n."""
    if not adds:
        return []
    b, n = spec.bucket_ms, spec.n_buckets
    head = max(a.time_ms // b for a in adds)
    k = max(as_of_ms // b, head)
    return [a for a in adds if a.time_ms // b > k - n]


def reference_totals(adds: list[Add], spec: WindowSpec, as_of_ms: int) -> list[int]:
    totals = [0] * WIDTH
    for add in counted(adds, spec, as_of_ms):
        for field, amount in add.deltas:
            totals[field] += amount
    return totals


def reference_next_change(adds: list[Add], spec: WindowSpec, as_of_ms: int) -> int | None:
    buckets = [a.time_ms // spec.bucket_ms for a in counted(adds, spec, as_of_ms)]
    return (min(buckets) + spec.n_buckets) * spec.bucket_ms if buckets else None


def reference_run(adds: list[Add], spec: WindowSpec, as_of_ms: int, gap_ms: int) -> tuple[int, int]:
    """Events counted as of t, sorted by time; the run ending at the newest with every gap < gap_ms."""
    times = sorted(a.time_ms for a in counted(adds, spec, as_of_ms))
    if not adds or not times or max(a.time_ms for a in adds) != times[-1]:
        return 0, 0
    start = len(times) - 1
    while start > 0 and times[start] - times[start - 1] < gap_ms:
        start -= 1
    # count_field 0 of every Add below is 1, so the run's sum is its length
    return len(times) - start, times[start]


offsets = st.one_of(st.integers(0, 30_000), st.integers(0, 200_000), st.integers(0, 2_000_000))
deltas = st.lists(st.tuples(st.integers(1, WIDTH - 1), st.integers(1, 1000)), max_size=2).map(
    lambda extra: ((0, 1), *extra)
)
adds_strategy = st.lists(st.builds(Add, offsets.map(lambda o: T0 + o), deltas), max_size=60)
query_offsets = st.one_of(st.integers(-60_000, 60_000), st.integers(0, 3_000_000))


def build(adds: list[Add], spec: WindowSpec = SMALL, *, track_extent: bool = False) -> SlidingWindowCounter:
    counter = SlidingWindowCounter(spec, WIDTH, track_extent=track_extent)
    for add in adds:
        counter.add(add.time_ms, add.deltas)
    return counter


def roundtrip(counter: SlidingWindowCounter) -> SlidingWindowCounter:
    out = StateWriter()
    counter.encode(out)
    reader = StateReader(out.to_bytes(1, b"T"), 1, b"T")
    decoded = SlidingWindowCounter.decode(counter.spec, WIDTH, reader, track_extent=counter.track_extent)
    reader.done()
    return decoded


def encoded(counter: SlidingWindowCounter | KeyedWindowCounter) -> bytes:
    out = StateWriter()
    counter.encode(out)
    return out.to_bytes(1, b"T")


@settings(max_examples=300, deadline=None)
@given(adds=adds_strategy, query=query_offsets, seed=st.randoms(use_true_random=False))
def test_totals_match_the_definition_in_any_order(adds: list[Add], query: int, seed: random.Random) -> None:
    shuffled = adds.copy()
    seed.shuffle(shuffled)
    in_order, out_of_order = build(sorted(adds, key=lambda a: a.time_ms)), build(shuffled)
    as_of = T0 + query
    expected = reference_totals(adds, SMALL, as_of)
    assert in_order.totals(as_of) == expected
    assert out_of_order.totals(as_of) == expected
    assert encoded(in_order) == encoded(out_of_order)
    assert len(out_of_order) <= SMALL.n_buckets


@settings(max_examples=300, deadline=None)
@given(adds=adds_strategy, query=query_offsets)
def test_next_change_is_the_first_time_the_totals_move(adds: list[Add], query: int) -> None:
    counter = build(adds)
    as_of = T0 + query
    when = counter.next_change_ms(as_of)
    assert when == reference_next_change(adds, SMALL, as_of)
    now = counter.totals(as_of)
    if when is None:
        assert now == [0] * WIDTH
        assert counter.totals(as_of + 10 * SMALL.length_ms) == now
    else:
        assert when > as_of
        assert counter.totals(when - 1) == now
        assert counter.totals(when) != now


@settings(max_examples=300, deadline=None)
@given(adds=adds_strategy, query=query_offsets, seed=st.randoms(use_true_random=False))
def test_run_at_head_matches_the_gap_definition(adds: list[Add], query: int, seed: random.Random) -> None:
    gap_ms = 15_000  # wider than SMALL's 10 s buckets
    ones = [Add(a.time_ms, ((0, 1),)) for a in adds]
    seed.shuffle(ones)
    counter = build(ones, track_extent=True)
    as_of = T0 + query
    assert counter.run_at_head(as_of, gap_ms, 0) == reference_run(ones, SMALL, as_of, gap_ms)


@settings(max_examples=200, deadline=None)
@given(adds=adds_strategy, query=query_offsets)
def test_encoding_round_trips_exactly(adds: list[Add], query: int) -> None:
    for track_extent in (False, True):
        counter = build(adds, track_extent=track_extent)
        copy = roundtrip(counter)
        as_of = T0 + query
        assert copy.totals(as_of) == counter.totals(as_of)
        assert copy.next_change_ms(as_of) == counter.next_change_ms(as_of)
        assert encoded(copy) == encoded(counter)
        if track_extent:
            assert copy.run_at_head(as_of, 15_000, 0) == counter.run_at_head(as_of, 15_000, 0)
        # the copy keeps working like the original
        later = Add(T0 + 2_100_000, ((1, 5),))
        counter.add(later.time_ms, later.deltas)
        copy.add(later.time_ms, later.deltas)
        assert copy.totals(as_of) == counter.totals(as_of)


def test_a_window_counts_whole_buckets() -> None:
    day = USER_WINDOWS[-1]  # 24 h in 15 min buckets
    counter = SlidingWindowCounter(day, 1)
    bucket_start = (T0 // day.bucket_ms) * day.bucket_ms
    counter.add(bucket_start, ((0, 1),))  # first ms of a bucket
    counter.add(bucket_start + day.bucket_ms - 1, ((0, 1),))  # last ms of the same bucket
    # Both stay counted until the bucket's start is a full window behind the query's bucket ...
    assert counter.totals(bucket_start + day.length_ms - 1) == [2]
    # ... and leave together: the window covered 23 h 45 min for the later event.
    assert counter.totals(bucket_start + day.length_ms) == [0]
    assert counter.next_change_ms(bucket_start) == bucket_start + day.length_ms


def test_a_query_before_the_newest_event_is_answered_as_of_the_newest_event() -> None:
    counter = SlidingWindowCounter(SMALL, 1)
    counter.add(T0, ((0, 1),))
    counter.add(T0 + 10 * SMALL.length_ms, ((0, 1),))  # the first event has left the window
    assert counter.totals(T0) == [1]


def test_events_older_than_the_window_at_the_newest_event_are_ignored() -> None:
    counter = SlidingWindowCounter(SMALL, 1)
    assert counter.add(T0 + SMALL.length_ms, ((0, 1),))
    assert not counter.add(T0 - 1, ((0, 1),))
    assert counter.add(T0 + SMALL.bucket_ms, ((0, 1),))
    assert counter.totals(T0 + SMALL.length_ms) == [2]
    assert len(counter) == 2


def test_state_stays_bounded_for_a_long_busy_history() -> None:
    counter = SlidingWindowCounter(USER_WINDOWS[0], 1, track_extent=True)
    for second in range(0, 7 * 24 * 3600, 3):
        counter.add(T0 + second * 1000, ((0, 1),))
    assert len(counter) == USER_WINDOWS[0].n_buckets
    assert len(encoded(counter)) < 4000


@pytest.mark.parametrize("amount", [0, -1])
def test_amounts_must_be_positive(amount: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        SlidingWindowCounter(SMALL, 1).add(T0, ((0, amount),))


def test_truncated_or_foreign_state_is_refused() -> None:
    counter = build([Add(T0, ((0, 1),)), Add(T0 + 20_000, ((1, 3),))])
    data = encoded(counter)
    with pytest.raises(StateFormatError, match="truncated"):
        SlidingWindowCounter.decode(SMALL, WIDTH, StateReader(data[:-8], 1, b"T"))
    with pytest.raises(StateFormatError, match="kind"):
        StateReader(data, 1, b"X")
    with pytest.raises(StateFormatError, match="version"):
        StateReader(data, 2, b"T")


# --- keyed counter (category affinity) ---------------------------------------------------------

keyed_adds = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 3 * 3_600_000), st.integers(0, 3 * 86_400_000)).map(lambda o: T0 + o),
        st.sampled_from(["news", "sport", "music", "cooking", "gaming", "travel"]),
        st.integers(1, 3),
    ),
    max_size=60,
)


def reference_decayed(adds: list[tuple[int, str, int]], spec: WindowSpec) -> tuple[list[str], list[int]]:
    if not adds:
        return [], []
    b, n = spec.bucket_ms, spec.n_buckets
    head = max(t // b for t, _, _ in adds)
    sums: dict[str, int] = {}
    for t, key, amount in adds:
        if t // b > head - n:
            sums[key] = sums.get(key, 0) + amount * AFFINITY_DECAY[head - t // b]
    keys = sorted(sums)
    return keys, [sums[k] for k in keys]


@settings(max_examples=300, deadline=None)
@given(adds=keyed_adds, seed=st.randoms(use_true_random=False))
def test_keyed_decayed_sums_match_the_definition_in_any_order(
    adds: list[tuple[int, str, int]], seed: random.Random
) -> None:
    shuffled = adds.copy()
    seed.shuffle(shuffled)
    counters = []
    for sequence in (sorted(adds), shuffled):
        counter = KeyedWindowCounter(AFFINITY_WINDOW)
        for t, key, amount in sequence:
            counter.add(t, key, amount)
        counters.append(counter)
    expected = reference_decayed(adds, AFFINITY_WINDOW)
    for counter in counters:
        assert counter.decayed_sums(AFFINITY_DECAY) == expected
    assert encoded(counters[0]) == encoded(counters[1])
    out = StateWriter()
    counters[1].encode(out)
    reader = StateReader(out.to_bytes(1, b"T"), 1, b"T")
    copy = KeyedWindowCounter.decode(AFFINITY_WINDOW, reader)
    reader.done()
    assert copy.decayed_sums(AFFINITY_DECAY) == expected
    assert encoded(copy) == encoded(counters[1])


def test_advancing_the_keyed_window_expires_old_keys() -> None:
    counter = KeyedWindowCounter(AFFINITY_WINDOW)
    counter.add(T0, "news", 2)
    assert counter.decayed_sums(AFFINITY_DECAY) == (["news"], [2 * AFFINITY_DECAY[0]])
    assert counter.advance(T0 + AFFINITY_WINDOW.length_ms)
    assert counter.decayed_sums(AFFINITY_DECAY) == ([], [])
    assert not counter.advance(T0)
