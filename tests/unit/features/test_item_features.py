"""Item features against a brute-force reference of the definitions in features/definitions.py."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.definitions import (
    CTR_PRIOR_ALPHA,
    CTR_PRIOR_BETA,
    DAY_MS,
    HOUR_MS,
    ITEM_FEATURES,
    ITEM_WINDOWS,
    MINUTE_MS,
    TRENDING_EVENT_TYPES,
    TRENDING_PSEUDO_EVENTS_PER_HOUR,
    FeatureValue,
)
from features.events import EventType, InteractionEvent
from features.item import ItemFeatures, replay_item
from features.windows import StateFormatError
from tests.factories import NOW_MS, make_event

T0 = NOW_MS


def reference_values(events: list[InteractionEvent], as_of_ms: int) -> dict[str, FeatureValue]:
    newest = max((e.event_time_ms for e in events), default=None)
    t = as_of_ms if newest is None else max(as_of_ms, newest)
    out: dict[str, FeatureValue] = {}
    activity = []
    for w in ITEM_WINDOWS:
        b, n = w.bucket_ms, w.n_buckets
        window = [e for e in events if e.event_time_ms // b > t // b - n]
        impressions = sum(e.event_type == EventType.IMPRESSION for e in window)
        clicks = sum(e.event_type == EventType.CLICK for e in window)
        out[f"item_impressions_{w.suffix}"] = impressions
        out[f"item_clicks_{w.suffix}"] = clicks
        out[f"item_completions_{w.suffix}"] = sum(e.event_type == EventType.COMPLETE for e in window)
        out[f"item_smoothed_ctr_{w.suffix}"] = (clicks + CTR_PRIOR_ALPHA) / (
            impressions + CTR_PRIOR_ALPHA + CTR_PRIOR_BETA
        )
        activity.append(sum(e.event_type in TRENDING_EVENT_TYPES for e in window))
    p = TRENDING_PSEUDO_EVENTS_PER_HOUR
    out["item_trending_velocity"] = (activity[0] + p) / (activity[1] / 24 + p)
    return out


def assert_same(actual: Mapping[str, FeatureValue], expected: Mapping[str, FeatureValue]) -> None:
    assert list(actual) == list(expected)
    for name, value in expected.items():
        got = actual[name]
        assert type(got) is type(value), name
        if isinstance(value, float):
            assert isinstance(got, float)
            assert math.isclose(got, value, rel_tol=1e-9), (name, got, value)
        else:
            assert got == value, (name, got, value)


def build(events: list[InteractionEvent]) -> ItemFeatures:
    state = ItemFeatures.empty()
    for event in events:
        state.apply(event)
    return state


@st.composite
def item_events(draw: st.DrawFn, max_size: int = 80) -> list[InteractionEvent]:
    scale = draw(st.sampled_from([10 * MINUTE_MS, 3 * HOUR_MS, 3 * DAY_MS]))
    size = draw(st.integers(0, max_size))
    return [
        InteractionEvent(
            event_id=f"e{i}",
            user_id=draw(st.sampled_from(["u-1", "u-2", "u-3"])),
            item_id="item-1",
            event_type=draw(st.sampled_from(list(EventType))),
            event_time_ms=T0 + draw(st.integers(0, scale)),
        )
        for i in range(size)
    ]


as_of_offsets = st.one_of(st.integers(-HOUR_MS, 0), st.integers(0, 2 * HOUR_MS), st.integers(0, 2 * DAY_MS))


@settings(max_examples=250, deadline=None)
@given(events=item_events(), offset=as_of_offsets, seed=st.randoms(use_true_random=False))
def test_values_match_the_definitions_in_any_arrival_order(
    events: list[InteractionEvent], offset: int, seed: random.Random
) -> None:
    shuffled = events.copy()
    seed.shuffle(shuffled)
    in_order = build(sorted(events, key=lambda e: e.event_time_ms))
    out_of_order = build(shuffled)
    as_of = max((e.event_time_ms for e in events), default=T0) + offset
    expected = reference_values(events, as_of)
    assert_same(in_order.values(as_of), expected)
    assert_same(out_of_order.values(as_of), expected)
    assert in_order.to_bytes() == out_of_order.to_bytes()


@settings(max_examples=150, deadline=None)
@given(events=item_events(), offset=as_of_offsets)
def test_state_round_trips_and_next_change_is_exact(events: list[InteractionEvent], offset: int) -> None:
    state = build(events)
    copy = ItemFeatures.from_bytes(state.to_bytes())
    as_of = max((e.event_time_ms for e in events), default=T0) + offset
    assert copy.values(as_of) == state.values(as_of)
    assert copy.to_bytes() == state.to_bytes()
    assert copy.newest_event_ms == state.newest_event_ms
    when = state.next_change_ms(as_of)
    assert copy.next_change_ms(as_of) == when
    if when is None:
        assert state.values(as_of + 3 * DAY_MS) == state.values(as_of)
    else:
        assert when > as_of
        assert state.values(when - 1) == state.values(as_of)
        assert state.values(when) != state.values(as_of)


def test_feature_names_types_and_order_follow_the_contract() -> None:
    values = build([make_event(event_type=EventType.IMPRESSION, event_time_ms=T0)]).values(T0)
    assert list(values) == [spec.name for spec in ITEM_FEATURES]
    python_type = {"int64": int, "float64": float}
    for spec in ITEM_FEATURES:
        assert type(values[spec.name]) is python_type[spec.dtype], spec.name


def event(offset_ms: int, event_type: EventType, event_id: str) -> InteractionEvent:
    return make_event(event_id=event_id, event_type=event_type, event_time_ms=T0 + offset_ms, item_id="i-1")


def test_smoothed_ctr_starts_at_the_prior_and_follows_the_data() -> None:
    prior_mean = CTR_PRIOR_ALPHA / (CTR_PRIOR_ALPHA + CTR_PRIOR_BETA)
    assert build([]).values(T0)["item_smoothed_ctr_24h"] == prior_mean
    events = [event(i, EventType.IMPRESSION, f"i{i}") for i in range(80)]
    events += [event(100 + i, EventType.CLICK, f"c{i}") for i in range(40)]
    v = build(events).values(T0 + 1_000)
    assert v["item_smoothed_ctr_1h"] == pytest.approx(41 / 100)
    assert (v["item_impressions_24h"], v["item_clicks_24h"]) == (80, 40)


def test_trending_velocity_compares_the_last_hour_with_the_daily_average() -> None:
    # Steady: one impression every 10 minutes for a day.
    steady = [event(i * 10 * MINUTE_MS, EventType.IMPRESSION, f"s{i}") for i in range(144)]
    now = T0 + 144 * 10 * MINUTE_MS - 1
    assert build(steady).values(now)["item_trending_velocity"] == pytest.approx(1.0, abs=0.15)
    # A burst of 60 engagements in the last few minutes makes it trend; skips do not count.
    burst = [event(24 * HOUR_MS - MINUTE_MS + i, EventType.LIKE, f"b{i}") for i in range(60)]
    skips = [event(24 * HOUR_MS - MINUTE_MS + i, EventType.SKIP, f"k{i}") for i in range(60)]
    rising = build(steady + burst).values(now)["item_trending_velocity"]
    assert isinstance(rising, float) and rising > 5
    assert build(steady + burst + skips).values(now)["item_trending_velocity"] == rising


def test_windows_expire_without_new_events() -> None:
    state = build([event(0, EventType.CLICK, "c1")])
    assert state.values(T0)["item_clicks_1h"] == 1
    first = state.next_change_ms(T0)
    assert first == (T0 // MINUTE_MS) * MINUTE_MS + HOUR_MS
    assert state.values(first)["item_clicks_1h"] == 0
    assert state.values(first)["item_clicks_24h"] == 1
    last = state.next_change_ms(first)
    assert last == (T0 // (15 * MINUTE_MS)) * 15 * MINUTE_MS + DAY_MS
    assert state.next_change_ms(last) is None


def test_events_older_than_the_state_needs_change_nothing() -> None:
    state = build([event(2 * DAY_MS, EventType.CLICK, "new")])
    before = state.to_bytes()
    state.apply(event(2 * DAY_MS - 25 * HOUR_MS, EventType.CLICK, "old"))
    assert state.to_bytes() == before


def test_state_stays_small_for_a_very_busy_item() -> None:
    rng = random.Random(3)
    types = list(EventType)
    state = ItemFeatures.empty()
    for i in range(100_000):  # one event every 4 s for 4.6 days
        state.apply(InteractionEvent(f"e{i}", "u", "item-1", rng.choice(types), T0 + i * 4_000))
    data = state.to_bytes()
    assert len(data) < 8_000
    assert ItemFeatures.from_bytes(data).values(T0 + 400_000_000) == state.values(T0 + 400_000_000)


def test_replay_deduplicates_by_event_id_and_is_point_in_time() -> None:
    first = event(0, EventType.CLICK, "a")
    duplicate = dataclasses.replace(first, event_type=EventType.IMPRESSION)
    future = event(HOUR_MS, EventType.CLICK, "b")
    values = replay_item([first, duplicate, future], T0 + 1)
    assert values == build([first]).values(T0 + 1)
    assert (values["item_clicks_1h"], values["item_impressions_1h"]) == (1, 0)
    with pytest.raises(ValueError, match="items"):
        replay_item([first, dataclasses.replace(future, item_id="i-2")], T0)


def test_foreign_bytes_are_refused() -> None:
    user_like = b"\x01U" + bytes(8)
    with pytest.raises(StateFormatError):
        ItemFeatures.from_bytes(user_like)
