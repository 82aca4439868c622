"""Point-in-time training data: every impression, with the features the feed API would have seen, and its label.

How a row is made:

1. The log goes through `features.admission.admitted_events` (per-user dedup and
   lateness, in log order), exactly as the stream job admits events.
2. Impressions of one ranked response (same request_id, or the same user and
   millisecond when there is none) form a slate; the slate's request time is its
   first impression's event time.
3. Labels come from what followed within `attribution_window_ms`: an outcome joins
   its impression by (request_id, item_id), else the user's latest impression of
   that item. `clicked` = a click; `engaged` = a complete, like or share, or a view
   whose watch_ms reaches `engaged_watch_fraction` of the item's duration
   (`engaged_watch_ms` when the catalog has no duration).
4. Features are computed by one incremental replay in event-time order: before a
   slate is scored, every admitted event with event_time < request time is applied
   to the user and item aggregators (`features.user.UserFeatures`,
   `features.item.ItemFeatures`) and nothing later is; then the matrix comes from
   `features.ranking.feature_matrix`, the same function the API calls. The
   aggregators are functions of the set of applied events, so replaying in event
   time instead of log order gives the stream job's values. A user or item with no
   applied event has no online row, hence None (NaN columns), as in serving.
5. Optionally a second replay, `stale_offset_ms` behind, gives the user features
   as the online store held them that long before each request (items stay live).
6. Declared stream feature views (`features.declared`, read from a Feast repo or
   registry), when given, are replayed the same way into `declared_features`: each
   user or item view's `DeclaredFeatures` holds the events before the request time,
   as of it (user views also `stale_offset_ms` behind, as in 5).
   `with_declared_inputs()` appends them to the ranker's input columns, after
   `RANKER_FEATURES`, named `"<view>:<feature>"`.

Event time is the clock: an event that was late in processing time but within the
lateness bound counts from its event time, as the stream job's windows do.
The split is by time, never random: see `time_split`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from operator import attrgetter
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from features.admission import admitted_events
from features.declared import DeclaredFeatures, DeclaredView
from features.definitions import HOUR_MS, MINUTE_MS, FeatureValue
from features.events import EventType, InteractionEvent
from features.item import ItemFeatures
from features.ranking import (
    CROSS_RANKER_FEATURES,
    RANKER_FEATURES,
    USER_RANKER_FEATURES,
    ItemMeta,
    feature_matrix,
)
from features.user import UserFeatures
from training.errors import DatasetError

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
ObjectArray = npt.NDArray[np.object_]
Progress = Callable[[int, int], None]

_OUTCOMES: Final = frozenset({EventType.CLICK, EventType.VIEW, EventType.COMPLETE, EventType.LIKE, EventType.SHARE})
_ALWAYS_ENGAGED: Final = frozenset({EventType.COMPLETE, EventType.LIKE, EventType.SHARE})
_USER_COLUMNS: Final = [RANKER_FEATURES.index(name) for name in USER_RANKER_FEATURES + CROSS_RANKER_FEATURES]
_POPULARITY_FEATURE: Final = "item_clicks_24h"


@dataclass(frozen=True)
class DatasetConfig:
    attribution_window_ms: int = 5 * MINUTE_MS
    """An outcome counts for an impression at most this long after it."""
    lateness_ms: int = 300_000
    """Per-user lateness bound of the admission gate; keep it equal to the stream job's."""
    engaged_watch_fraction: float = 0.5
    engaged_watch_ms: int = 10_000
    """Engaged-view threshold for items whose duration the catalog does not know."""
    stale_offset_ms: int | None = HOUR_MS
    """Also compute user features this much older (None: skip the second replay)."""


@dataclass(frozen=True)
class ImpressionDataset:
    """One row per impression, rows grouped by slate in request-time order."""

    features: Float32Array
    """(n, len(RANKER_FEATURES)) as `feature_matrix` builds it at the request time."""
    stale_features: Float32Array | None
    """Same, with the user's features `stale_offset_ms` older; None if not computed."""
    clicked: BoolArray
    engaged: BoolArray
    slate: IntArray
    """Slate number, 0.. in request-time order: the NDCG group."""
    request_time_ms: IntArray
    user_id: ObjectArray
    item_id: ObjectArray
    event_id: ObjectArray
    """Event id of the impression (joins to the synthetic ground truth)."""
    position: IntArray
    """Logged slot, -1 if the event had none; for analysis only, never a model input."""
    new_user: BoolArray
    """The user had no admitted event (no online feature row) before the request."""
    popularity: FloatArray
    """The popularity baseline's score: the item's clicks in the last 24 h as of the request."""
    declared_features: Float32Array | None = None
    """(n, len(declared_feature_names)): declared stream feature views as of the request (NaN: no row or
    null), or None when none were asked for. Ranker inputs only after `with_declared_inputs()`."""
    declared_feature_names: tuple[str, ...] = ()
    """"<view>:<feature>" per column of `declared_features`."""
    declared_stale_features: Float32Array | None = None
    """Same, with the user-keyed views `stale_offset_ms` older (item views live), as `stale_features`."""
    declared_user_columns: tuple[int, ...] = ()
    """Columns of `declared_features` that come from user-keyed views."""
    feature_names: tuple[str, ...] = RANKER_FEATURES
    """The names of the columns of `features`, in order: the model's input list."""

    def __len__(self) -> int:
        return len(self.engaged)

    def with_declared_inputs(self) -> ImpressionDataset:
        """The same rows with the declared features appended to the ranker's inputs, after `RANKER_FEATURES`
        in `declared_feature_names` order: what `freshrank train --declared-features` trains on."""
        if self.declared_features is None:
            raise DatasetError("no declared features were replayed: pass declared views to build_dataset")
        if self.feature_names != RANKER_FEATURES:
            raise DatasetError("the declared features are already ranker inputs")
        stale = None
        if self.stale_features is not None and self.declared_stale_features is not None:
            stale = np.hstack([self.stale_features, self.declared_stale_features])
        return replace(
            self,
            features=np.hstack([self.features, self.declared_features]),
            stale_features=stale,
            feature_names=RANKER_FEATURES + self.declared_feature_names,
        )

    def take(self, rows: IntArray | BoolArray) -> ImpressionDataset:
        taken: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            taken[f.name] = value if value is None or isinstance(value, tuple) else value[rows]
        return ImpressionDataset(**taken)

    def no_user_features(self) -> Float32Array:
        """The matrix the API builds when it has no user row: user and cross columns NaN (and the user-keyed
        declared columns, when they are inputs)."""
        out = self.features.copy()
        out[:, _USER_COLUMNS] = np.nan
        if self.feature_names != RANKER_FEATURES:
            out[:, [len(RANKER_FEATURES) + c for c in self.declared_user_columns]] = np.nan
        return out

    def label(self, name: str) -> BoolArray:
        if name == "engaged":
            return self.engaged
        if name == "clicked":
            return self.clicked
        raise DatasetError(f"unknown label {name!r}; use 'engaged' or 'clicked'")

    def content_hash(self) -> str:
        """sha256 over the model inputs and labels: equal data, equal hash."""
        digest = hashlib.sha256()
        digest.update(",".join(self.feature_names).encode())
        for array in (self.features, self.clicked, self.engaged, self.slate, self.request_time_ms):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def _engaged_threshold(meta: ItemMeta | None, config: DatasetConfig) -> float:
    if meta is not None and meta.duration_ms:
        return config.engaged_watch_fraction * meta.duration_ms
    return float(config.engaged_watch_ms)


class _Replay:
    """Aggregators fed in event-time order up to (excluding) a moving time."""

    def __init__(self, events: Sequence[InteractionEvent], categories: Mapping[str, str], items: bool) -> None:
        self.events = events
        self.categories = categories
        self.next = 0
        self.users: dict[str, UserFeatures] = {}
        self.items: dict[str, ItemFeatures] | None = {} if items else None

    def advance_to(self, time_ms: int) -> None:
        """Apply every event with event_time_ms < time_ms not yet applied."""
        events, users, items, categories = self.events, self.users, self.items, self.categories
        i, n = self.next, len(events)
        while i < n and events[i].event_time_ms < time_ms:
            event = events[i]
            user = users.get(event.user_id)
            if user is None:
                user = users[event.user_id] = UserFeatures.empty()
            user.apply(event, categories.get(event.item_id))
            if items is not None:
                item = items.get(event.item_id)
                if item is None:
                    item = items[event.item_id] = ItemFeatures.empty()
                item.apply(event)
            i += 1
        self.next = i

    def user_values(self, user_id: str, as_of_ms: int) -> dict[str, FeatureValue] | None:
        state = self.users.get(user_id)
        return None if state is None else state.values(as_of_ms)


class _DeclaredReplay:
    """Declared views' per-entity state fed in event-time order up to (excluding) a moving time, as `_Replay`."""

    def __init__(self, events: Sequence[InteractionEvent], views: Sequence[DeclaredView]) -> None:
        self.events = events
        self.views = tuple(views)
        self.next = 0
        self.states: list[dict[str, DeclaredFeatures]] = [{} for _ in self.views]
        self.names = tuple(name for view in self.views for name in view.input_names)
        self.user_columns = tuple(
            column
            for column, view in enumerate(v for v in self.views for _ in v.feature_names)
            if view.entity_key == "user_id"
        )

    def advance_to(self, time_ms: int) -> None:
        events, i, n = self.events, self.next, len(self.events)
        while i < n and events[i].event_time_ms < time_ms:
            event = events[i]
            for view, states in zip(self.views, self.states, strict=True):
                if not view.admits(event):
                    continue
                key = event.user_id if view.entity_key == "user_id" else event.item_id
                state = states.get(key)
                if state is None:
                    state = states[key] = DeclaredFeatures.empty(view)
                state.apply(event)
            i += 1
        self.next = i

    def rows(self, user_id: str, item_ids: Sequence[str], as_of_ms: int) -> Float32Array:
        """One row per item: every declared feature as the online store held it at `as_of_ms` (NaN: none)."""
        out = np.full((len(item_ids), len(self.names)), np.nan, dtype=np.float32)
        column = 0
        for view, states in zip(self.views, self.states, strict=True):
            width = len(view.aggregations)
            keys = [user_id] * len(item_ids) if view.entity_key == "user_id" else list(item_ids)
            for row, key in enumerate(keys):
                state = states.get(key)
                if state is not None:
                    values = state.values(as_of_ms)
                    out[row, column : column + width] = [
                        np.nan if (v := values[name]) is None else float(v)  # type: ignore[arg-type]
                        for name in view.feature_names
                    ]
            column += width
        return out


def build_dataset(
    events: Iterable[InteractionEvent],
    catalog: Mapping[str, ItemMeta],
    config: DatasetConfig = DatasetConfig(),
    progress: Progress | None = None,
    declared: Sequence[DeclaredView] = (),
) -> ImpressionDataset:
    """Replay an event log (in log order) into point-in-time impression rows; see the module docstring.

    `declared`: stream feature views declared in Feast (`features.declared`), replayed the same way
    (events before the request time only) into `declared_features`."""
    admitted = list(admitted_events(events, config.lateness_ms))
    admitted.sort(key=attrgetter("event_time_ms"))  # stable: ties keep log order

    impressions: list[InteractionEvent] = []
    clicked: list[bool] = []
    engaged: list[bool] = []
    by_request: dict[tuple[str, str, str], int] = {}
    latest: dict[tuple[str, str], int] = {}
    slates: dict[tuple[str, str], list[int]] = {}
    window = config.attribution_window_ms
    for event in admitted:
        if event.event_type is EventType.IMPRESSION:
            row = len(impressions)
            impressions.append(event)
            clicked.append(False)
            engaged.append(False)
            request = event.request_id or f"@{event.event_time_ms}"
            by_request.setdefault((event.user_id, request, event.item_id), row)
            latest[(event.user_id, event.item_id)] = row
            slates.setdefault((event.user_id, request), []).append(row)
        elif event.event_type in _OUTCOMES:
            found = by_request.get((event.user_id, event.request_id, event.item_id)) if event.request_id else None
            if found is None:
                found = latest.get((event.user_id, event.item_id))
            if found is None:
                continue
            delay = event.event_time_ms - impressions[found].event_time_ms
            if not 0 <= delay <= window:
                continue
            if event.event_type is EventType.CLICK:
                clicked[found] = True
            elif event.event_type in _ALWAYS_ENGAGED or (
                event.watch_ms is not None and event.watch_ms >= _engaged_threshold(catalog.get(event.item_id), config)
            ):
                engaged[found] = True
    if not impressions:
        raise DatasetError("the event log has no admitted impressions: nothing to label")

    # Slates in order of their first impression, which is time order.
    ordered = sorted(slates.values(), key=lambda rows: rows[0])
    categories = {item_id: meta.category for item_id, meta in catalog.items() if meta.category}
    live = _Replay(admitted, categories, items=True)
    stale = _Replay(admitted, categories, items=False) if config.stale_offset_ms is not None else None
    declared_replay = _DeclaredReplay(admitted, declared) if declared else None
    x_declared = np.empty((len(impressions), len(declared_replay.names)), dtype=np.float32) if declared_replay else None
    # User-keyed declared views as they were `stale_offset_ms` earlier, like the built-in user features.
    user_views = [view for view in declared if view.entity_key == "user_id"]
    declared_stale = _DeclaredReplay(admitted, user_views) if user_views and stale is not None else None
    x_declared_stale = np.empty_like(x_declared) if x_declared is not None and stale is not None else None
    n_features = len(RANKER_FEATURES)
    n_rows = len(impressions)
    x = np.empty((n_rows, n_features), dtype=np.float32)
    x_stale = np.empty((n_rows, n_features), dtype=np.float32) if stale is not None else None
    order = np.empty(n_rows, dtype=np.int64)
    slate_of = np.empty(n_rows, dtype=np.int64)
    request_time = np.empty(n_rows, dtype=np.int64)
    new_user = np.empty(n_rows, dtype=bool)
    popularity = np.empty(n_rows, dtype=np.float64)
    out = 0
    report_every = max(1, len(ordered) // 200)
    for number, rows in enumerate(ordered):
        first = impressions[rows[0]]
        t = first.event_time_ms
        live.advance_to(t)
        user = live.user_values(first.user_id, t)
        assert live.items is not None
        item_states = [live.items.get(impressions[r].item_id) for r in rows]
        items = [None if s is None else s.values(t) for s in item_states]
        metas = [catalog.get(impressions[r].item_id) for r in rows]
        end = out + len(rows)
        x[out:end] = feature_matrix(user, items, metas, t)
        if declared_replay is not None and x_declared is not None:
            declared_replay.advance_to(t)
            x_declared[out:end] = declared_replay.rows(first.user_id, [impressions[r].item_id for r in rows], t)
            if x_declared_stale is not None and config.stale_offset_ms is not None:
                x_declared_stale[out:end] = x_declared[out:end]
                if declared_stale is not None:
                    then = t - config.stale_offset_ms
                    declared_stale.advance_to(then)
                    user_rows = declared_stale.rows(first.user_id, [""] * len(rows), then)
                    x_declared_stale[out:end, declared_replay.user_columns] = user_rows
        if stale is not None and x_stale is not None and config.stale_offset_ms is not None:
            then = t - config.stale_offset_ms
            stale.advance_to(then)
            x_stale[out:end] = feature_matrix(stale.user_values(first.user_id, then), items, metas, t)
        order[out:end] = rows
        slate_of[out:end] = number
        request_time[out:end] = t
        new_user[out:end] = user is None
        popularity[out:end] = [0.0 if v is None else float(v[_POPULARITY_FEATURE]) for v in items]  # type: ignore[arg-type]
        out = end
        if progress is not None and (number % report_every == 0 or number == len(ordered) - 1):
            progress(number + 1, len(ordered))

    def column(values: list[object], dtype: type) -> npt.NDArray[np.generic]:
        return np.asarray(values, dtype=dtype)[order]

    return ImpressionDataset(
        features=x,
        stale_features=x_stale,
        clicked=np.asarray(clicked, dtype=bool)[order],
        engaged=np.asarray(engaged, dtype=bool)[order],
        slate=slate_of,
        request_time_ms=request_time,
        user_id=column([e.user_id for e in impressions], object),  # type: ignore[arg-type]
        item_id=column([e.item_id for e in impressions], object),  # type: ignore[arg-type]
        event_id=column([e.event_id for e in impressions], object),  # type: ignore[arg-type]
        position=column([-1 if e.position is None else e.position for e in impressions], np.int64),  # type: ignore[arg-type]
        new_user=new_user,
        popularity=popularity,
        declared_features=x_declared,
        declared_feature_names=declared_replay.names if declared_replay is not None else (),
        declared_stale_features=x_declared_stale,
        declared_user_columns=declared_replay.user_columns if declared_replay is not None else (),
    )


@dataclass(frozen=True)
class TimeSplit:
    """train: t < train_end_ms - gap_ms; valid: train_end_ms <= t < valid_end_ms - gap_ms; test: t >= valid_end_ms.

    t is the slate's request time. The gap (the attribution window) keeps every label
    of a period inside that period: no training label is decided by an event of the
    validation or test period.
    """

    train_end_ms: int
    valid_end_ms: int
    gap_ms: int

    def masks(self, request_time_ms: IntArray) -> tuple[BoolArray, BoolArray, BoolArray]:
        t = request_time_ms
        train = t < self.train_end_ms - self.gap_ms
        valid = (t >= self.train_end_ms) & (t < self.valid_end_ms - self.gap_ms)
        test = t >= self.valid_end_ms
        return train, valid, test


def time_split(
    dataset: ImpressionDataset, valid_fraction: float = 0.2, test_fraction: float = 0.2, gap_ms: int = 5 * MINUTE_MS
) -> TimeSplit:
    """Boundaries at the request-time quantiles that leave the given fractions of slates to valid and test."""
    if not (0 < valid_fraction and 0 < test_fraction and valid_fraction + test_fraction < 1):
        raise DatasetError("valid and test fractions must be positive and leave data to train on")
    _, first_rows = np.unique(dataset.slate, return_index=True)
    times = np.sort(dataset.request_time_ms[first_rows])
    train_end = int(times[int(len(times) * (1 - valid_fraction - test_fraction))])
    valid_end = int(times[min(int(len(times) * (1 - test_fraction)), len(times) - 1)])
    split = TimeSplit(train_end, valid_end, gap_ms)
    train, valid, test = split.masks(dataset.request_time_ms)
    for name, mask in (("train", train), ("validation", valid), ("test", test)):
        if not dataset.engaged[mask].any():
            raise DatasetError(
                f"the {name} period has no engaged impressions ({int(mask.sum())} rows): "
                "use a longer event log or more traffic"
            )
    return split
