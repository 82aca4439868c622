"""User features against a brute-force reference of the definitions in features/definitions.py."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.definitions import (
    AFFINITY_DECAY,
    AFFINITY_EVENT_WEIGHTS,
    AFFINITY_TOP_K,
    AFFINITY_WINDOW,
    DAY_MS,
    EVENT_TYPE_STEMS,
    HOUR_MS,
    LAST_ITEMS_MAX,
    MINUTE_MS,
    SESSION_GAP_MS,
    USER_FEATURES,
    USER_RETENTION_WINDOW,
    USER_WINDOWS,
    FeatureValue,
)
from features.events import EventType, InteractionEvent
from features.user import UserFeatures, replay_user
from features.windows import StateFormatError
from tests.factories import NOW_MS, make_event

T0 = NOW_MS
CATEGORIES = {f"item-{i}": f"cat-{i % 13}" for i in range(40) if i % 7}  # every 7th item has no category


def reference_values(
    events: list[InteractionEvent], categories: Mapping[str, str], as_of_ms: int
) -> dict[str, FeatureValue]:
    """Every user feature straight from its documented definition, over the whole event list."""
    newest = max((e.event_time_ms for e in events), default=None)
    t = as_of_ms if newest is None else max(as_of_ms, newest)
    out: dict[str, FeatureValue] = {}
    for w in USER_WINDOWS:
        b, n = w.bucket_ms, w.n_buckets
        window = [e for e in events if e.event_time_ms // b > t // b - n]
        counts = {event_type: sum(e.event_type == event_type for e in window) for event_type in EventType}
        for event_type, stem in EVENT_TYPE_STEMS.items():
            out[f"user_{stem}_{w.suffix}"] = counts[event_type]
        out[f"user_watch_seconds_{w.suffix}"] = sum(e.watch_ms or 0 for e in window) / 1000
        impressions, clicks = counts[EventType.IMPRESSION], counts[EventType.CLICK]
        out[f"user_ctr_{w.suffix}"] = clicks / impressions if impressions else 0.0
        views, completes = counts[EventType.VIEW], counts[EventType.COMPLETE]
        watches = views + completes
        out[f"user_completion_rate_{w.suffix}"] = completes / watches if watches else 0.0
    if newest is None:
        return out | {
            "user_last_item_ids": [],
            "user_affinity_categories": [],
            "user_affinity_scores": [],
            "user_session_events": 0,
            "user_session_seconds": 0.0,
            "user_seconds_since_last_event": -1.0,
        }

    rb, rn = USER_RETENTION_WINDOW.bucket_ms, USER_RETENTION_WINDOW.n_buckets
    retained = [e for e in events if e.event_time_ms // rb > newest // rb - rn]
    latest: dict[str, tuple[int, str]] = {}
    for e in retained:
        key = (e.event_time_ms, e.event_id)
        latest[e.item_id] = max(latest.get(e.item_id, key), key)
    out["user_last_item_ids"] = sorted(latest, key=lambda item: latest[item], reverse=True)[:LAST_ITEMS_MAX]

    ab, an = AFFINITY_WINDOW.bucket_ms, AFFINITY_WINDOW.n_buckets
    head = newest // ab
    scores: dict[str, int] = {}
    for e in events:
        category = categories.get(e.item_id)
        weight = AFFINITY_EVENT_WEIGHTS.get(e.event_type, 0)
        if category and weight and e.event_time_ms // ab > head - an:
            scores[category] = scores.get(category, 0) + weight * AFFINITY_DECAY[head - e.event_time_ms // ab]
    top = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:AFFINITY_TOP_K]
    out["user_affinity_categories"] = [c for c, _ in top]
    out["user_affinity_scores"] = [s / sum(scores.values()) for _, s in top]

    counted = sorted(e.event_time_ms for e in events if e.event_time_ms // rb > t // rb - rn)
    if t - newest >= SESSION_GAP_MS:
        out["user_session_events"], out["user_session_seconds"] = 0, 0.0
    else:
        first = len(counted) - 1
        while first > 0 and counted[first] - counted[first - 1] < SESSION_GAP_MS:
            first -= 1
        out["user_session_events"] = len(counted) - first
        out["user_session_seconds"] = (newest - counted[first]) / 1000
    out["user_seconds_since_last_event"] = (t - newest) / 1000
    return out


def assert_same(actual: Mapping[str, FeatureValue], expected: Mapping[str, FeatureValue]) -> None:
    """Exactly equal ints and lists of strings; floats within 1e-9 relative."""
    assert list(actual) == list(expected)
    for name, value in expected.items():
        got = actual[name]
        if isinstance(value, float):
            assert isinstance(got, float), name
            assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-12), (name, got, value)
        elif isinstance(value, list) and value and isinstance(value[0], float):
            assert isinstance(got, list) and len(got) == len(value), name
            for g, v in zip(got, value, strict=True):
                assert isinstance(g, float), name
                assert math.isclose(g, v, rel_tol=1e-9), (name, got, value)
        else:
            assert got == value, (name, got, value)
            assert type(got) is type(value), name


def build(events: list[InteractionEvent], categories: Mapping[str, str] = CATEGORIES) -> UserFeatures:
    state = UserFeatures.empty()
    for event in events:
        state.apply(event, categories.get(event.item_id))
    return state


@st.composite
def user_events(draw: st.DrawFn, max_size: int = 80) -> list[InteractionEvent]:
    scale = draw(st.sampled_from([10 * MINUTE_MS, 3 * HOUR_MS, 3 * DAY_MS]))
    # A few shared timestamps exercise the (event_time_ms, event_id) tie-break.
    times = st.one_of(st.integers(0, scale), st.sampled_from([0, 1, scale // 2])).map(lambda o: T0 + o)
    size = draw(st.integers(0, max_size))
    ids = draw(st.lists(st.uuids().map(str), min_size=size, max_size=size, unique=True))
    return [
        InteractionEvent(
            event_id=event_id,
            user_id="u-1",
            item_id=draw(st.sampled_from(sorted(CATEGORIES) + ["item-0", "item-7", "item-14"])),
            event_type=draw(st.sampled_from(list(EventType))),
            event_time_ms=draw(times),
            watch_ms=draw(st.one_of(st.none(), st.integers(0, 120_000))),
        )
        for event_id in ids
    ]


as_of_offsets = st.one_of(
    st.integers(-HOUR_MS, 0),
    st.integers(0, 40 * MINUTE_MS),
    st.integers(0, 2 * DAY_MS),
)


@settings(max_examples=250, deadline=None)
@given(events=user_events(), offset=as_of_offsets, seed=st.randoms(use_true_random=False))
def test_values_match_the_definitions_in_any_arrival_order(
    events: list[InteractionEvent], offset: int, seed: random.Random
) -> None:
    shuffled = events.copy()
    seed.shuffle(shuffled)
    in_order = build(sorted(events, key=lambda e: (e.event_time_ms, e.event_id)))
    out_of_order = build(shuffled)
    as_of = max((e.event_time_ms for e in events), default=T0) + offset
    expected = reference_values(events, CATEGORIES, as_of)
    assert_same(in_order.values(as_of), expected)
    assert_same(out_of_order.values(as_of), expected)
    # The state itself is a function of the event set: identical bytes whatever the order.
    assert in_order.to_bytes() == out_of_order.to_bytes()
    assert in_order.next_change_ms(as_of) == out_of_order.next_change_ms(as_of)


@settings(max_examples=150, deadline=None)
@given(events=user_events(), offset=as_of_offsets)
def test_state_round_trips_exactly(events: list[InteractionEvent], offset: int) -> None:
    state = build(events)
    copy = UserFeatures.from_bytes(state.to_bytes())
    as_of = T0 + offset
    assert copy.values(as_of) == state.values(as_of)
    assert copy.to_bytes() == state.to_bytes()
    assert copy.newest_event_ms == state.newest_event_ms
    assert copy.next_change_ms(as_of) == state.next_change_ms(as_of)
    more = make_event(event_id="later", event_time_ms=T0 + 4 * DAY_MS, item_id="item-1")
    state.apply(more, "cat-1")
    copy.apply(more, "cat-1")
    assert copy.to_bytes() == state.to_bytes()


def without_clock(values: Mapping[str, FeatureValue]) -> dict[str, FeatureValue]:
    return {k: v for k, v in values.items() if k != "user_seconds_since_last_event"}


@settings(max_examples=150, deadline=None)
@given(events=user_events(), offset=as_of_offsets)
def test_next_change_is_when_values_first_change(events: list[InteractionEvent], offset: int) -> None:
    state = build(events)
    as_of = max((e.event_time_ms for e in events), default=T0) + offset
    when = state.next_change_ms(as_of)
    now = without_clock(state.values(as_of))
    if when is None:
        assert now == without_clock(state.values(as_of + 3 * DAY_MS))
    else:
        assert when > as_of
        assert without_clock(state.values(when - 1)) == now
        assert without_clock(state.values(when)) != now


def test_feature_names_types_and_order_follow_the_contract() -> None:
    values = build([make_event(event_time_ms=T0, item_id="item-1")]).values(T0)
    assert list(values) == [spec.name for spec in USER_FEATURES]
    python_type = {"int64": int, "float64": float, "string_list": list, "float_list": list}
    for spec in USER_FEATURES:
        assert type(values[spec.name]) is python_type[spec.dtype], spec.name
    assert all(type(c) is str for c in values["user_affinity_categories"])  # type: ignore[union-attr]
    assert all(type(s) is float for s in values["user_affinity_scores"])  # type: ignore[union-attr]


def event(offset_ms: int, event_type: EventType, item: str = "item-1", **fields: object) -> InteractionEvent:
    fields = {"watch_ms": None, "event_id": f"{event_type}-{item}-{offset_ms}", **fields}
    return make_event(event_type=event_type, event_time_ms=T0 + offset_ms, item_id=item, **fields)


def test_clicks_impressions_and_rates_over_the_windows() -> None:
    state = build(
        [
            event(0, EventType.IMPRESSION),
            event(11_000, EventType.IMPRESSION, "item-2"),
            event(12_000, EventType.CLICK),
            event(13_000, EventType.VIEW, watch_ms=40_000),
            event(14_000, EventType.COMPLETE, "item-2", watch_ms=60_000),
            event(15_000, EventType.COMPLETE, "item-3", watch_ms=20_000),
        ]
    )
    v = state.values(T0 + 20_000)
    assert (v["user_impressions_5m"], v["user_clicks_5m"], v["user_ctr_5m"]) == (2, 1, 0.5)
    assert v["user_watch_seconds_5m"] == 120.0
    assert v["user_completion_rate_5m"] == pytest.approx(2 / 3)
    # 10 s buckets: the bucket holding T0 is counted until T0's bucket start + 5 min.
    bucket_start = T0 // 10_000 * 10_000
    assert state.values(bucket_start + 5 * MINUTE_MS - 1)["user_impressions_5m"] == 2
    later = state.values(bucket_start + 5 * MINUTE_MS)
    assert later["user_impressions_5m"] == 1  # item-2's impression sat in the next bucket
    assert later["user_impressions_1h"] == 2
    assert later["user_seconds_since_last_event"] == (bucket_start + 5 * MINUTE_MS - T0 - 15_000) / 1000


def test_a_session_is_a_run_of_events_less_than_30_minutes_apart() -> None:
    events = [
        event(0, EventType.VIEW),
        event(29 * MINUTE_MS, EventType.VIEW),  # 29 min after: same session
        event(29 * MINUTE_MS + SESSION_GAP_MS, EventType.VIEW),  # exactly 30 min after: a new session
        event(29 * MINUTE_MS + SESSION_GAP_MS + 90_000, EventType.CLICK),
    ]
    state = build(events)
    newest = T0 + 29 * MINUTE_MS + SESSION_GAP_MS + 90_000
    v = state.values(newest)
    assert (v["user_session_events"], v["user_session_seconds"]) == (2, 90.0)
    assert state.values(newest + SESSION_GAP_MS - 1)["user_session_events"] == 2
    ended = state.values(newest + SESSION_GAP_MS)
    assert (ended["user_session_events"], ended["user_session_seconds"]) == (0, 0.0)
    assert state.next_change_ms(newest + SESSION_GAP_MS - 1) == newest + SESSION_GAP_MS
    # A late event inside the gap joins the two sessions, whatever order it arrives in.
    state.apply(event(45 * MINUTE_MS, EventType.LIKE), None)
    assert state.values(newest)["user_session_events"] == 5


def test_last_items_are_distinct_newest_first_and_capped() -> None:
    events = [event(i * 1000, EventType.IMPRESSION, f"item-{i}") for i in range(25)]
    events.append(event(30_000, EventType.CLICK, "item-3"))  # item-3 becomes the newest again
    state = build(list(reversed(events)))
    items = state.values(T0 + 60_000)["user_last_item_ids"]
    assert items == ["item-3"] + [f"item-{i}" for i in range(24, 5, -1)]
    assert len(items) == LAST_ITEMS_MAX


def test_affinity_prefers_recent_interest_and_ignores_impressions() -> None:
    events = [
        event(0, EventType.LIKE, "item-1"),  # cat-1, weight 2, 12 h before the newest: 2 * 1/4
        event(12 * HOUR_MS, EventType.VIEW, "item-2"),  # cat-2, weight 1, now
        event(12 * HOUR_MS, EventType.IMPRESSION, "item-3"),  # impressions carry no interest
    ]
    v = build(events).values(T0 + 12 * HOUR_MS)
    assert v["user_affinity_categories"] == ["cat-2", "cat-1"]
    assert v["user_affinity_scores"] == pytest.approx([2 / 3, 1 / 3], rel=1e-5)


def test_events_older_than_the_state_needs_change_nothing() -> None:
    state = build([event(2 * DAY_MS, EventType.CLICK, "item-2")])
    before = state.to_bytes()
    state.apply(event(2 * DAY_MS - 25 * HOUR_MS, EventType.LIKE, "item-1"), "cat-1")
    assert state.to_bytes() == before


def test_state_stays_small_for_a_user_with_a_very_long_busy_history() -> None:
    state = UserFeatures.empty()
    rng = random.Random(7)
    types = list(EventType)
    for i in range(100_000):  # one event every 8 s for 9 days
        item = f"item-{rng.randrange(40)}"
        state.apply(
            InteractionEvent(f"e{i}", "u-1", item, rng.choice(types), T0 + i * 8_000, rng.randrange(60_000)),
            CATEGORIES.get(item),
        )
    data = state.to_bytes()
    assert len(data) < 32_000
    assert UserFeatures.from_bytes(data).values(T0 + 800_000_000) == state.values(T0 + 800_000_000)


def test_empty_state_values_and_expiry() -> None:
    state = UserFeatures.empty()
    assert state.newest_event_ms is None
    assert state.next_change_ms(T0) is None
    assert_same(state.values(T0), reference_values([], CATEGORIES, T0))
    assert UserFeatures.from_bytes(state.to_bytes()).values(T0) == state.values(T0)


def test_replay_deduplicates_by_event_id_and_is_point_in_time() -> None:
    first = event(0, EventType.CLICK, "item-1")
    duplicate = dataclasses.replace(first, event_type=EventType.SHARE)  # same event_id: ignored
    future = event(DAY_MS, EventType.CLICK, "item-2")
    values = replay_user([first, duplicate, future], CATEGORIES, T0 + 1_000)
    assert values == build([first]).values(T0 + 1_000)
    assert values["user_clicks_24h"] == 1 and values["user_shares_24h"] == 0


def test_replay_refuses_events_of_several_users() -> None:
    with pytest.raises(ValueError, match="users"):
        replay_user([event(0, EventType.CLICK), event(1, EventType.CLICK, user_id="u-2")], CATEGORIES, T0)


CORRUPTION_BASE = build(
    [event(i * 20_000, EventType.VIEW, f"item-{i % 9}", watch_ms=1_000 * i) for i in range(40)]
).to_bytes()


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_corrupt_bytes_either_decode_or_raise_a_state_format_error(position: int, value: int) -> None:
    data = bytearray(CORRUPTION_BASE)
    data[position % len(data)] = value
    try:
        UserFeatures.from_bytes(bytes(data))
    except StateFormatError:
        pass


def test_returned_lists_are_copies() -> None:
    state = build([event(0, EventType.CLICK, "item-1")])
    values = state.values(T0)
    items = values["user_last_item_ids"]
    assert isinstance(items, list)
    items.clear()
    assert state.values(T0)["user_last_item_ids"] == ["item-1"]


def test_foreign_bytes_are_refused() -> None:
    with pytest.raises(StateFormatError):
        UserFeatures.from_bytes(b"\x01Ixx")
    with pytest.raises(StateFormatError):
        UserFeatures.from_bytes(build([event(0, EventType.CLICK)]).to_bytes()[:-3])
