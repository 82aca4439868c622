"""The ranker input layout: column order, cross features, and NaN for whatever is missing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from features.definitions import AFFINITY_TOP_K, HOUR_MS, ITEM_FEATURE_NAMES, LAST_ITEMS_MAX, USER_FEATURE_NAMES
from features.events import EventType
from features.item import ItemFeatures
from features.ranking import (
    CATALOG_RANKER_FEATURES,
    CROSS_RANKER_FEATURES,
    ITEM_RANKER_FEATURES,
    RANKER_FEATURES,
    USER_RANKER_FEATURES,
    CatalogColumns,
    ItemMeta,
    feature_matrix,
    feature_matrix_columns,
)
from features.user import UserFeatures
from tests.factories import NOW_MS, make_event

COL = {name: index for index, name in enumerate(RANKER_FEATURES)}


def live_user() -> dict[str, object]:
    state = UserFeatures.empty()
    for k, (item, category) in enumerate([("i-1", "news"), ("i-2", "sport"), ("i-3", "news")]):
        state.apply(make_event(event_id=f"e{k}", item_id=item, event_time_ms=NOW_MS - 60_000 + k), category)
    return dict(state.values(NOW_MS))


def live_item() -> dict[str, object]:
    state = ItemFeatures.empty()
    state.apply(make_event(event_type=EventType.IMPRESSION, event_time_ms=NOW_MS - 1000))
    state.apply(make_event(event_id="e2", event_type=EventType.CLICK, event_time_ms=NOW_MS - 500))
    return dict(state.values(NOW_MS))


def test_layout_is_numeric_user_then_item_then_catalog_then_cross_without_position() -> None:
    parts = USER_RANKER_FEATURES + ITEM_RANKER_FEATURES + CATALOG_RANKER_FEATURES + CROSS_RANKER_FEATURES
    assert parts == RANKER_FEATURES
    assert len(set(RANKER_FEATURES)) == len(RANKER_FEATURES)
    assert "user_last_item_ids" not in RANKER_FEATURES and "user_affinity_scores" not in RANKER_FEATURES
    assert [n for n in USER_FEATURE_NAMES if n in USER_RANKER_FEATURES] == list(USER_RANKER_FEATURES)
    assert list(ITEM_RANKER_FEATURES) == list(ITEM_FEATURE_NAMES)
    assert not any("position" in name for name in RANKER_FEATURES)


def test_values_land_in_their_named_columns() -> None:
    user, item = live_user(), live_item()
    meta = ItemMeta("i-9", "news", NOW_MS - 3 * HOUR_MS, 30_000)
    x = feature_matrix(user, [item], [meta], NOW_MS)
    assert x.dtype == np.float32 and x.shape == (1, len(RANKER_FEATURES))
    for name in USER_RANKER_FEATURES:
        assert x[0, COL[name]] == pytest.approx(float(user[name]), rel=1e-6)  # type: ignore[arg-type]
    for name in ITEM_RANKER_FEATURES:
        assert x[0, COL[name]] == pytest.approx(float(item[name]), rel=1e-6)  # type: ignore[arg-type]
    assert x[0, COL["item_age_hours"]] == pytest.approx(3.0)
    assert x[0, COL["item_duration_seconds"]] == pytest.approx(30.0)


def test_cross_features_follow_the_users_categories_and_recent_items() -> None:
    user = live_user()
    categories = user["user_affinity_categories"]
    assert categories == ["news", "sport"]
    metas = [
        ItemMeta("i-1", "news", NOW_MS, 1000),  # seen, favourite category
        ItemMeta("i-7", "sport", NOW_MS, 1000),  # not seen, second category
        ItemMeta("i-8", "cooking", NOW_MS, 1000),  # category the user never touched
    ]
    x = feature_matrix(user, [None, None, None], metas, NOW_MS)
    scores = user["user_affinity_scores"]
    assert isinstance(scores, list)
    assert x[:, COL["cross_category_affinity"]].tolist() == pytest.approx([scores[0], scores[1], 0.0])
    assert x[:, COL["cross_category_rank"]].tolist() == [1.0, 2.0, AFFINITY_TOP_K + 1]
    assert x[:, COL["cross_seen_recently"]].tolist() == [1.0, 0.0, 0.0]
    # i-1 was the user's third-newest item of three (i-3, i-2, i-1).
    assert x[:, COL["cross_seen_rank"]].tolist() == [3.0, LAST_ITEMS_MAX + 1, LAST_ITEMS_MAX + 1]


def test_missing_user_item_or_meta_gives_nan_not_an_error() -> None:
    user, item = live_user(), live_item()
    meta = ItemMeta("i-1", "news", NOW_MS, 1000)
    no_user = feature_matrix(None, [item], [meta], NOW_MS)
    user_and_cross = [COL[n] for n in USER_RANKER_FEATURES + CROSS_RANKER_FEATURES]
    assert np.isnan(no_user[0, user_and_cross]).all()
    assert not np.isnan(no_user[0, [COL[n] for n in ITEM_RANKER_FEATURES + CATALOG_RANKER_FEATURES]]).any()

    x = feature_matrix(user, [item, None, item], [meta, meta, None], NOW_MS)
    item_cols = [COL[n] for n in ITEM_RANKER_FEATURES]
    assert np.isnan(x[1, item_cols]).all() and not np.isnan(x[0, item_cols]).any()
    assert np.isnan(x[2, [COL[n] for n in CATALOG_RANKER_FEATURES + CROSS_RANKER_FEATURES]]).all()

    unknown_category = ItemMeta("i-1", None, None, None)
    partial_user = {k: v for k, v in user.items() if k != "user_ctr_1h"}
    y = feature_matrix(partial_user, [item], [unknown_category], NOW_MS)  # type: ignore[arg-type]
    assert math.isnan(y[0, COL["user_ctr_1h"]])
    assert math.isnan(y[0, COL["cross_category_affinity"]]) and y[0, COL["cross_seen_recently"]] == 1.0
    assert math.isnan(y[0, COL["item_age_hours"]])


def test_empty_and_mismatched_inputs() -> None:
    assert feature_matrix(None, [], [], NOW_MS).shape == (0, len(RANKER_FEATURES))
    with pytest.raises(ValueError, match="parallel"):
        feature_matrix(None, [None], [], NOW_MS)


def test_item_created_after_now_has_age_zero() -> None:
    x = feature_matrix(None, [None], [ItemMeta("i", None, NOW_MS + HOUR_MS, None)], NOW_MS)
    assert x[0, COL["item_age_hours"]] == 0.0


def test_a_non_numeric_value_is_nan_in_its_column_only() -> None:
    item = live_item()
    item["item_clicks_1h"] = ["not", "a", "number"]
    item["item_clicks_24h"] = None
    x = feature_matrix(None, [item], [None], NOW_MS)
    assert math.isnan(x[0, COL["item_clicks_1h"]]) and math.isnan(x[0, COL["item_clicks_24h"]])
    assert x[0, COL["item_impressions_1h"]] == 1.0


def test_columns_entry_point_checks_that_its_inputs_are_parallel() -> None:
    catalog = CatalogColumns.of([ItemMeta("a", "news", NOW_MS, None)])
    block = np.full((2, len(ITEM_RANKER_FEATURES)), np.nan)
    with pytest.raises(ValueError, match="parallel"):
        feature_matrix_columns(None, block, catalog, ["a", "b"], NOW_MS)


def test_a_category_repeated_in_the_affinity_list_takes_its_later_entry() -> None:
    user = {"user_affinity_categories": ["news", "sport", "news"], "user_affinity_scores": [0.5, 0.3, 0.2]}
    x = feature_matrix(
        user, [None, None], [ItemMeta("a", "news", None, None), ItemMeta("b", "music", None, None)], NOW_MS
    )  # type: ignore[arg-type]
    assert x[0, COL["cross_category_affinity"]] == pytest.approx(0.2) and x[0, COL["cross_category_rank"]] == 3
    assert x[1, COL["cross_category_affinity"]] == 0 and x[1, COL["cross_category_rank"]] == AFFINITY_TOP_K + 1
