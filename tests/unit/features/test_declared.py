"""Declared aggregations against a brute-force reference, and the refusals of `validate`."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.declared import (
    FILTER_TAG,
    FUNCTIONS,
    AggregationDraft,
    AggregationSpec,
    DeclaredFeatures,
    DeclaredView,
    Refusal,
    ViewDraft,
    column_value,
    replay_declared,
    validate,
    validate_all,
)
from features.definitions import FeatureValue, WindowSpec
from features.events import EventType, InteractionEvent
from features.windows import StateFormatError
from tests.factories import NOW_MS, make_event

T0 = NOW_MS - NOW_MS % 60_000
WINDOWS = (
    WindowSpec("10s", 10_000, 1_000),
    WindowSpec("60s", 60_000, 10_000),
    WindowSpec("5s", 5_000, 5_000),  # tumbling: slide_interval == time_window
)
COLUMNS = {"count": "item_id", "count_distinct": "item_id", "sum": "watch_ms", "mean": "watch_ms"}


def _spec(function: str, window: WindowSpec, column: str | None = None) -> AggregationSpec:
    column = column or COLUMNS.get(function, "position")
    dtype = "float64" if function == "mean" else "int64"
    return AggregationSpec(f"{function}_{column}_{window.suffix}", column, function, window, dtype)


ALL_SPECS = tuple(_spec(f, w) for f in FUNCTIONS for w in WINDOWS) + (
    _spec("count", WINDOWS[0], "watch_ms"),  # counts non-null values only
    _spec("max", WINDOWS[1], "watch_ms"),
)
VIEW = DeclaredView("v", "user_id", ALL_SPECS)


def reference(view: DeclaredView, events: Sequence[InteractionEvent], as_of_ms: int) -> dict[str, FeatureValue | None]:
    """The definition, computed the slow way: filter, then each window's events as of max(as_of, newest)."""
    kept = [e for e in events if view.admits(e)]
    newest = max(e.event_time_ms for e in kept)
    t = max(as_of_ms, newest)
    out: dict[str, FeatureValue | None] = {}
    for spec in view.aggregations:
        b, n = spec.window.bucket_ms, spec.window.n_buckets
        values = [
            v for e in kept if e.event_time_ms // b > t // b - n and (v := column_value(e, spec.column)) is not None
        ]
        numbers = [int(v) for v in values if isinstance(v, int)]
        result: FeatureValue | None
        if spec.function == "count":
            result = len(values)
        elif spec.function == "count_distinct":
            result = len({str(v) for v in values})
        elif spec.function == "sum":
            result = sum(numbers)
        elif spec.function == "mean":
            result = sum(numbers) / len(numbers) if numbers else None
        elif spec.function == "max":
            result = max(numbers) if numbers else None
        else:
            result = min(numbers) if numbers else None
        out[spec.name] = result
    return out


def assert_same(actual: dict[str, FeatureValue | None], expected: dict[str, FeatureValue | None]) -> None:
    assert list(actual) == list(expected)
    for name, want in expected.items():
        got = actual[name]
        if isinstance(want, float):
            assert isinstance(got, float) and math.isclose(got, want, rel_tol=1e-12), (name, got, want)
        else:
            assert got == want and type(got) is type(want), (name, got, want)


event_strategy = st.builds(
    lambda i, dt, kind, watch, item, position: make_event(
        event_id=f"e-{i}",
        event_time_ms=T0 + dt,
        event_type=kind,
        watch_ms=watch,
        item_id=f"i-{item}",
        position=position,
    ),
    st.integers(0, 10**9),
    st.integers(0, 180_000),  # three minutes: several lengths of every window
    st.sampled_from(list(EventType)),
    st.one_of(st.none(), st.integers(0, 60_000)),
    st.integers(0, 6),
    st.one_of(st.none(), st.integers(0, 30)),
)


def unique(events: list[InteractionEvent]) -> list[InteractionEvent]:
    seen: dict[str, InteractionEvent] = {}
    for event in events:
        seen.setdefault(event.event_id, event)
    return list(seen.values())


@settings(max_examples=300, deadline=None)
@given(st.lists(event_strategy, min_size=1, max_size=60), st.integers(-20_000, 260_000), st.randoms())
def test_every_function_and_window_equals_the_reference_in_any_order(
    events: list[InteractionEvent], as_of_offset: int, rng: random.Random
) -> None:
    events = unique(events)
    shuffled = list(events)
    rng.shuffle(shuffled)
    state, other = DeclaredFeatures.empty(VIEW), DeclaredFeatures.empty(VIEW)
    for event in events:
        state.apply(event)
    for event in shuffled:
        other.apply(event)
    as_of = T0 + as_of_offset  # sometimes before the newest event: answered as of the newest
    assert_same(state.values(as_of), reference(VIEW, events, as_of))
    # Order independence is byte for byte, so a restore cannot tell the orders apart either.
    assert state.to_bytes() == other.to_bytes()
    assert_same(DeclaredFeatures.from_bytes(VIEW, state.to_bytes()).values(as_of), state.values(as_of))


@settings(max_examples=200, deadline=None)
@given(st.lists(event_strategy, min_size=1, max_size=50), st.integers(0, 200_000), st.randoms())
def test_out_of_order_duplicates_and_a_filter_replay_like_the_job(
    events: list[InteractionEvent], as_of_offset: int, rng: random.Random
) -> None:
    view = dataclasses.replace(VIEW, event_types=frozenset({"click", "view"}))
    log = list(events) + rng.sample(events, len(events) // 3)  # resends: first occurrence wins
    rng.shuffle(log)
    as_of = T0 + as_of_offset
    first = unique(log)
    known = [e for e in first if e.event_time_ms <= as_of and view.admits(e)]
    got = replay_declared(view, log, as_of)
    if not known:
        assert got is None  # no event passes: the job writes no row
    else:
        assert got is not None
        assert_same(got, reference(view, known, as_of))


def test_next_change_is_when_the_oldest_counted_bucket_leaves() -> None:
    spec = _spec("sum", WINDOWS[1])  # 60 s in 10 s buckets
    view = DeclaredView("v", "user_id", (spec,))
    state = DeclaredFeatures.empty(view)
    state.apply(make_event(event_id="a", event_time_ms=T0 + 5_000, watch_ms=7))
    state.apply(make_event(event_id="b", event_time_ms=T0 + 25_000, watch_ms=3))
    change = state.next_change_ms(T0 + 25_000)
    assert change == T0 + 60_000  # bucket [T0, T0+10 s) leaves when bucket 6 starts
    assert state.values(change - 1)[spec.name] == 10
    assert state.values(change)[spec.name] == 3
    assert state.next_change_ms(change) == T0 + 80_000
    assert state.values(T0 + 80_000)[spec.name] == 0
    assert state.next_change_ms(T0 + 80_000) is None


def test_empty_windows_give_zero_counts_and_null_statistics() -> None:
    view = DeclaredView("v", "user_id", tuple(_spec(f, WINDOWS[0]) for f in FUNCTIONS))
    state = DeclaredFeatures.empty(view)
    state.apply(make_event(event_time_ms=T0, watch_ms=None, position=None))
    values = state.values(T0 + 60_000)
    assert values == {
        "count_item_id_10s": 0,
        "count_distinct_item_id_10s": 0,
        "sum_watch_ms_10s": 0,
        "mean_watch_ms_10s": None,
        "max_position_10s": None,
        "min_position_10s": None,
    }


def test_a_changed_view_keeps_unchanged_aggregations_and_warms_up_new_ones() -> None:
    kept, dropped, added = _spec("sum", WINDOWS[1]), _spec("max", WINDOWS[0]), _spec("count", WINDOWS[1])
    old = DeclaredView("v", "user_id", (kept, dropped))
    state = DeclaredFeatures.empty(old)
    for i in range(5):
        state.apply(make_event(event_id=f"e{i}", event_time_ms=T0 + i * 10_000, watch_ms=100))
    new = DeclaredView("v", "user_id", (added, dataclasses.replace(kept, name="renamed_sum")))
    restored = DeclaredFeatures.from_bytes(new, state.to_bytes(), restored_at_ms=T0 + 45_000)
    assert restored.values(T0 + 45_000) == {"count_item_id_60s": 0, "renamed_sum": 500}
    assert restored.warming_up(T0 + 45_000) == ["count_item_id_60s"]
    restored.apply(make_event(event_id="late", event_time_ms=T0 + 50_000, watch_ms=1))
    assert restored.values(T0 + 50_000) == {"count_item_id_60s": 1, "renamed_sum": 501}
    # Warm once a whole window has passed since the aggregation started.
    assert restored.warming_up(T0 + 105_000) == []


def test_state_of_another_kind_or_truncated_is_refused() -> None:
    state = DeclaredFeatures.empty(VIEW)
    state.apply(make_event(event_time_ms=T0))
    data = state.to_bytes()
    with pytest.raises(StateFormatError):
        DeclaredFeatures.from_bytes(VIEW, data[:-3])
    with pytest.raises(StateFormatError):
        DeclaredFeatures.from_bytes(VIEW, b"\x01U" + data[2:])


# --- validation ------------------------------------------------------------------------


def draft(*aggregations: AggregationDraft, **changes: object) -> ViewDraft:
    base = ViewDraft(
        name="user_watch",
        source_kind="KafkaSource",
        topic="interactions",
        message_format="AvroFormat",
        source_timestamp_field="event_time",
        timestamp_field="event_time",
        join_keys=(("user_id", "STRING"),),
        aggregations=aggregations or (AggregationDraft("watch_ms", "sum", 600_000, 10_000, "sum_watch_ms_600s"),),
        schema={"sum_watch_ms_600s": "Int64", "as_of_ms": "Int64"},
        transformation=None,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def refusals_of(view: ViewDraft) -> list[Refusal]:
    result = validate(view, "interactions")
    assert isinstance(result, list), "expected a refusal"
    return result


def test_a_supported_view_becomes_buckets_of_its_slide_interval() -> None:
    view = validate(
        draft(
            AggregationDraft("watch_ms", "sum", 600_000, 10_000, "sum_watch_ms_600s"),
            AggregationDraft("watch_ms", "mean", 600_000, None, "mean_watch_ms_600s"),
            tags={FILTER_TAG: "view, complete"},
            schema={"sum_watch_ms_600s": "Int64", "mean_watch_ms_600s": "Float64"},
        ),
        "interactions",
    )
    assert isinstance(view, DeclaredView)
    assert view.entity_key == "user_id" and view.event_types == {"view", "complete"}
    sliding, tumbling = view.aggregations
    assert (sliding.window.length_ms, sliding.window.bucket_ms, sliding.dtype) == (600_000, 10_000, "int64")
    assert (tumbling.window.n_buckets, tumbling.dtype) == (1, "float64")  # Feast's default slide = the window


@pytest.mark.parametrize(
    ("view", "field", "reason"),
    [
        (draft(AggregationDraft("watch_ms", "median", 60_000, 1_000, "n")), "aggregation n", "unknown function"),
        (draft(AggregationDraft("dwell_ms", "sum", 60_000, 1_000, "n")), "aggregation n", "not in the event schema"),
        (draft(AggregationDraft("country", "sum", 60_000, 1_000, "n")), "aggregation n", "needs an integer column"),
        (draft(AggregationDraft("watch_ms", "sum", 60_000, 7_000, "n")), "aggregation n", "not a multiple"),
        (draft(AggregationDraft("watch_ms", "sum", 60_000, 500, "n")), "aggregation n", "whole number of seconds"),
        (draft(AggregationDraft("watch_ms", "sum", 2 * 86_400_000, 3_600_000, "n")), "aggregation n", "longer than"),
        (draft(AggregationDraft("watch_ms", "sum", 86_400_000, 1_000, "n")), "aggregation n", "buckets; at most"),
        (draft(AggregationDraft("watch_ms", "sum", None, None, "n")), "aggregation n", "time_window is required"),
        (draft(AggregationDraft("watch_ms", "sum", 60_000, 1_000, "x")), "schema field x", "has no field"),
        (
            draft(AggregationDraft("watch_ms", "mean", 60_000, 1_000, "n"), schema={"n": "Int64"}),
            "schema field n",
            "cannot hold mean",
        ),
        (draft(join_keys=(("session_id", "STRING"),)), "entities", "user_id or item_id"),
        (draft(join_keys=(("user_id", "STRING"), ("item_id", "STRING"))), "entities", "exactly one"),
        (draft(transformation="pandas udf"), "udf", "not run"),
        (draft(topic="clicks"), "source.topic", "reads 'interactions'"),
        (draft(source_kind="PushSource", topic=None), "source", "KafkaSource only"),
        (draft(message_format="JsonFormat"), "source.message_format", "use AvroFormat"),
        (draft(timestamp_field="ingested_at"), "timestamp_field", "event time"),
        (draft(tags={FILTER_TAG: "click,purchase"}), f"tags[{FILTER_TAG}]", "purchase"),
        (draft(aggregations=()), "aggregations", "none declared"),
        (draft(schema={"sum_watch_ms_600s": "Int64", "clicks": "Int64"}), "schema field clicks", "no aggregation"),
        (draft(schema={"sum_watch_ms_600s": "Int64", "as_of_ms": "Float64"}), "schema field as_of_ms", "Int64"),
    ],
)
def test_each_unsupported_form_is_refused_with_view_field_and_reason(view: ViewDraft, field: str, reason: str) -> None:
    # Every aggregation of these drafts has a schema field unless the case is about that.
    if not field.startswith("schema field"):
        view = dataclasses.replace(view, schema={**view.schema, **{a.name: "Int64" for a in view.aggregations}})
    refusals = refusals_of(view)
    assert any(r.view == "user_watch" and r.field == field and reason in r.reason for r in refusals), refusals


def test_built_in_view_names_are_reserved_and_every_view_is_reported() -> None:
    good = draft()
    bad = draft(name="user_stream_features")
    worse = draft(name="z", topic="other")
    accepted, refused = validate_all([worse, good, bad], "interactions", reserved=("user_stream_features",))
    assert [v.name for v in accepted] == ["user_watch"]
    assert [(r.view, r.field) for r in refused] == [("user_stream_features", "name"), ("z", "source.topic")]
