"""Point-in-time dataset: features are what the API would have seen, labels what followed, split by time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from features.declared import AggregationSpec, DeclaredFeatures, DeclaredView
from features.definitions import HOUR_MS, MINUTE_MS, WindowSpec
from features.events import EventType, InteractionEvent
from features.item import replay_item
from features.ranking import RANKER_FEATURES, ItemMeta, feature_matrix
from features.user import replay_user
from tests.factories import NOW_MS, make_event
from training.dataset import DatasetConfig, build_dataset, time_split
from training.errors import DatasetError
from training.sources import EventSource

T = NOW_MS
CATALOG = {
    "i-1": ItemMeta("i-1", "news", T - 5 * HOUR_MS, 30_000),
    "i-2": ItemMeta("i-2", "sport", T - 2 * HOUR_MS, 30_000),
    "i-3": ItemMeta("i-3", "news", T - HOUR_MS, 30_000),
}


def ev(event_id: str, kind: EventType, at: int, item: str = "i-1", **kw: object) -> InteractionEvent:
    fields: dict[str, object] = {"watch_ms": None, **kw}
    return make_event(event_id=event_id, event_type=kind, event_time_ms=at, item_id=item, **fields)


def history() -> list[InteractionEvent]:
    """Two hours of the user's past, another user's traffic on the items, then one ranked request at T."""
    return [
        ev("h1", EventType.IMPRESSION, T - 2 * HOUR_MS, "i-1", request_id="old", position=0),
        ev("h2", EventType.CLICK, T - 2 * HOUR_MS + 900, "i-1", request_id="old"),
        ev("h3", EventType.COMPLETE, T - 2 * HOUR_MS + 31_000, "i-1", request_id="old", watch_ms=30_000),
        ev("h4", EventType.IMPRESSION, T - 10 * MINUTE_MS, "i-3", user_id="u-2", request_id="x", position=0),
        ev("h5", EventType.CLICK, T - 10 * MINUTE_MS + 700, "i-3", user_id="u-2", request_id="x"),
        ev("h6", EventType.VIEW, T - 30 * MINUTE_MS, "i-2", watch_ms=4_000, request_id=None),
        # The request being labelled: three items shown at T, T+5, T+10.
        ev("r1", EventType.IMPRESSION, T, "i-1", request_id="req", position=0),
        ev("r2", EventType.IMPRESSION, T + 5, "i-2", request_id="req", position=1),
        ev("r3", EventType.IMPRESSION, T + 10, "i-3", request_id="req", position=2),
        ev("o1", EventType.CLICK, T + 1_500, "i-2", request_id="req"),
        ev("o2", EventType.VIEW, T + 21_500, "i-2", request_id="req", watch_ms=20_000),  # >= half of 30 s
        ev("o3", EventType.CLICK, T + 2_000, "i-3", request_id="req"),
        ev("o4", EventType.VIEW, T + 5_000, "i-3", request_id="req", watch_ms=3_000),  # too short to engage
        ev("o5", EventType.LIKE, T + 6 * MINUTE_MS, "i-1", request_id="req"),  # outside the 5 min window
    ]


def rows_of(events: list[InteractionEvent], request_time: int = T) -> tuple[np.ndarray, np.ndarray]:
    ds = build_dataset(events, CATALOG)
    mask = (ds.request_time_ms == request_time) & (ds.user_id == "u-1")
    return ds.features[mask], ds.stale_features[mask]  # type: ignore[index]


def test_labels_come_from_what_followed_within_the_window() -> None:
    ds = build_dataset(history(), CATALOG)
    at_t = ds.request_time_ms == T
    assert ds.item_id[at_t].tolist() == ["i-1", "i-2", "i-3"]
    assert ds.position[at_t].tolist() == [0, 1, 2]
    assert ds.clicked[at_t].tolist() == [False, True, True]
    assert ds.engaged[at_t].tolist() == [False, True, False]
    assert len(np.unique(ds.slate[at_t])) == 1
    # The earlier request: click + complete two hours before.
    old = ds.request_time_ms == T - 2 * HOUR_MS
    assert ds.clicked[old].tolist() == [True] and ds.engaged[old].tolist() == [True]


def test_features_equal_a_from_scratch_replay_of_everything_before_the_request() -> None:
    events = history()
    live, stale = rows_of(events)
    before = [e for e in events if e.event_time_ms < T]
    user = replay_user([e for e in before if e.user_id == "u-1"], {k: m.category for k, m in CATALOG.items()}, T)  # type: ignore[misc]
    items = [
        replay_item([e for e in before if e.item_id == item], T) if any(e.item_id == item for e in before) else None
        for item in ("i-1", "i-2", "i-3")
    ]
    metas = [CATALOG["i-1"], CATALOG["i-2"], CATALOG["i-3"]]
    np.testing.assert_array_equal(live, feature_matrix(user, items, metas, T))
    # Stale: the user as of one hour earlier (only the 2 h old events), items still live.
    then = T - HOUR_MS
    old_user = replay_user([e for e in before if e.user_id == "u-1" and e.event_time_ms < then], {"i-1": "news"}, then)
    np.testing.assert_array_equal(stale, feature_matrix(old_user, items, metas, T))
    assert not np.array_equal(live, stale)


@pytest.mark.parametrize(
    "planted",
    [
        ev("f1", EventType.LIKE, T + 1, "i-1", request_id="req"),  # the user, 1 ms after the request
        ev("f2", EventType.CLICK, T + 3, "i-2", user_id="u-3"),  # someone else, on a shown item
        ev("f3", EventType.SHARE, T + HOUR_MS, "i-3"),  # far future
        ev("f4", EventType.IMPRESSION, T, "i-2", user_id="u-4", request_id="z", position=0),  # same millisecond
    ],
    ids=["user-after", "item-after", "far-future", "same-ms-other-request"],
)
def test_a_planted_future_event_changes_no_feature_of_an_earlier_impression(planted: InteractionEvent) -> None:
    baseline, baseline_stale = rows_of(history())
    live, stale = rows_of([*history(), planted])
    np.testing.assert_array_equal(live, baseline)
    np.testing.assert_array_equal(stale, baseline_stale)


def test_late_and_duplicate_events_are_left_out_as_the_stream_job_does() -> None:
    events = history()
    duplicate = dataclasses.replace(events[5], event_time_ms=events[5].event_time_ms)  # same event id again
    late = ev("late", EventType.CLICK, T - 90 * MINUTE_MS, "i-2")  # logged after the request, > 5 min late
    baseline, _ = rows_of(events)
    with_noise, _ = rows_of([*events[:9], duplicate, late, *events[9:]])
    np.testing.assert_array_equal(with_noise, baseline)


def test_no_admitted_impression_is_an_error() -> None:
    with pytest.raises(DatasetError, match="no admitted impressions"):
        build_dataset([ev("c", EventType.CLICK, T)], CATALOG)


def test_time_split_keeps_periods_apart_and_in_order(small_world: EventSource) -> None:
    config = DatasetConfig(attribution_window_ms=MINUTE_MS, stale_offset_ms=None)
    ds = build_dataset(small_world.events, small_world.catalog, config)
    assert ds.stale_features is None and ds.features.shape[1] == len(RANKER_FEATURES)
    split = time_split(ds, 0.2, 0.2, gap_ms=MINUTE_MS)
    train, valid, test = split.masks(ds.request_time_ms)
    assert train.any() and valid.any() and test.any()
    assert not (train & valid).any() and not (valid & test).any() and not (train & test).any()
    t = ds.request_time_ms
    # Every training label is decided before the validation period starts, and so on.
    assert t[train].max() + MINUTE_MS < t[valid].min()
    assert t[valid].max() + MINUTE_MS < t[test].min()
    # Slates are never cut by the split.
    for mask in (train, valid, test):
        assert set(np.unique(ds.slate[mask])).isdisjoint(np.unique(ds.slate[~mask]))
    # Roughly 60/20/20 of the slates.
    assert 0.5 < len(np.unique(ds.slate[train])) / len(np.unique(ds.slate)) < 0.65


def declared_views() -> tuple[DeclaredView, DeclaredView]:
    user_watch = DeclaredView(
        "user_watch",
        "user_id",
        (AggregationSpec("sum_watch_ms_3h", "watch_ms", "sum", WindowSpec("3h", 3 * HOUR_MS, MINUTE_MS), "int64"),),
    )
    item_clicks = DeclaredView(
        "item_clicks",
        "item_id",
        (AggregationSpec("max_pos", "position", "max", WindowSpec("1h", HOUR_MS, MINUTE_MS), "int64"),),
        event_types=frozenset({"impression"}),
    )
    return user_watch, item_clicks


def test_declared_views_are_replayed_point_in_time_like_the_stream_job() -> None:
    user_watch, item_clicks = declared_views()
    events = [*history(), ev("f1", EventType.VIEW, T + 1, "i-1", watch_ms=99_000)]  # after the request: not counted
    ds = build_dataset(events, CATALOG, declared=[user_watch, item_clicks])
    assert ds.declared_feature_names == ("user_watch:sum_watch_ms_3h", "item_clicks:max_pos")
    at_t = (ds.request_time_ms == T) & (ds.user_id == "u-1")
    assert ds.declared_features is not None
    got = ds.declared_features[at_t]

    def reference(view: DeclaredView, key: str) -> float:
        state, seen = DeclaredFeatures.empty(view), False
        for e in events:
            entity = e.user_id if view.entity_key == "user_id" else e.item_id
            if entity == key and e.event_time_ms < T and view.admits(e):
                seen = state.apply(e) or seen
        value = state.values(T)[view.feature_names[0]] if seen else None
        return np.nan if value is None else float(value)  # type: ignore[arg-type]

    want = [[reference(user_watch, "u-1"), reference(item_clicks, item)] for item in ("i-1", "i-2", "i-3")]
    np.testing.assert_array_equal(got, np.asarray(want, dtype=np.float32))
    assert got[0, 0] == 34_000 and np.isnan(got[1, 1]) and got[2, 1] == 0  # i-2 had no earlier impression
    assert len(ds.take(np.flatnonzero(at_t)).declared_feature_names) == 2


def test_declared_features_become_ranker_inputs_after_the_built_ins_stale_and_without_a_user_like_them() -> None:
    events = history()
    plain = build_dataset(events, CATALOG, declared=declared_views())
    ds = plain.with_declared_inputs()
    n = len(RANKER_FEATURES)
    assert ds.feature_names == (*RANKER_FEATURES, "user_watch:sum_watch_ms_3h", "item_clicks:max_pos")
    assert ds.declared_user_columns == (0,)
    np.testing.assert_array_equal(ds.features[:, :n], plain.features)
    np.testing.assert_array_equal(ds.features[:, n:], plain.declared_features)  # type: ignore[arg-type]
    at_t = (ds.request_time_ms == T) & (ds.user_id == "u-1")
    # An hour stale: the user's view held only the complete two hours back (30 s), not the view at T - 30 min;
    # the item view stays live, as the built-in item features do.
    assert ds.stale_features is not None
    stale, live = ds.stale_features[at_t], ds.features[at_t]
    assert list(live[:, n]) == [34_000] * 3 and list(stale[:, n]) == [30_000] * 3
    np.testing.assert_array_equal(stale[:, n + 1], live[:, n + 1])
    no_user = ds.no_user_features()
    assert np.isnan(no_user[:, n]).all()
    np.testing.assert_array_equal(no_user[:, n + 1], ds.features[:, n + 1])
    assert ds.content_hash() != plain.content_hash()
    assert ds.take(np.flatnonzero(at_t)).feature_names == ds.feature_names
    with pytest.raises(DatasetError, match="already ranker inputs"):
        ds.with_declared_inputs()
    with pytest.raises(DatasetError, match="no declared features"):
        build_dataset(events, CATALOG).with_declared_inputs()
