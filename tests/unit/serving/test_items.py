"""The item cache's matrix is feature_matrix's matrix, and the catalog reloads when its file changes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from feature_repo.definitions import ITEM_VIEW
from feature_repo.layout import FeatureRow
from features.events import EventType
from features.item import ItemFeatures
from features.ranking import CatalogColumns, ItemMeta, feature_matrix, feature_matrix_columns
from features.user import UserFeatures
from serving.items import ITEM_COLUMNS, Catalog, ItemFeatureCache, ItemSnapshot
from serving.metrics import ServingMetrics
from serving.online_store import InMemoryOnlineStore
from simulator.catalog import CatalogItem, write_catalog
from tests.factories import NOW_MS, make_event


def live_rows() -> tuple[dict[str, object], dict[str, FeatureRow]]:
    user = UserFeatures.empty()
    for n, (item, category) in enumerate([("i-1", "news"), ("i-2", "sport"), ("i-3", "news")]):
        user.apply(make_event(event_id=f"u{n}", item_id=item, event_time_ms=NOW_MS - 60_000 + n), category)
    items: dict[str, FeatureRow] = {}
    for n in range(6):
        state = ItemFeatures.empty()
        for m in range(n):
            kind = EventType.CLICK if m % 2 else EventType.IMPRESSION
            state.apply(make_event(event_id=f"i{n}-{m}", item_id=f"i-{n}", event_type=kind, event_time_ms=NOW_MS - m))
        items[f"i-{n}"] = FeatureRow(ITEM_VIEW, f"i-{n}", dict(state.values(NOW_MS)), NOW_MS)
    return dict(user.values(NOW_MS)), items


def test_cached_item_columns_plus_per_request_columns_equal_feature_matrix() -> None:
    user, rows = live_rows()
    snapshot = ItemSnapshot.build({k: v for k, v in rows.items() if k != "i-5"}, NOW_MS - 5000)
    candidates = ["i-3", "i-0", "i-5", "unknown", "i-1"]
    metas = [
        ItemMeta("i-3", "news", NOW_MS - 3_600_000, 30_000),
        ItemMeta("i-0", "sport", NOW_MS - 60_000, None),
        None,
        ItemMeta("unknown", None, None, 10_000),
        ItemMeta("i-1", "music", NOW_MS, 5_000),
    ]
    cached = [snapshot.index.get(c, -1) for c in candidates]
    assembled = feature_matrix(user, [None] * len(candidates), metas, NOW_MS)
    block = np.full((len(candidates), len(ITEM_COLUMNS)), np.nan, dtype=np.float32)
    for n, row in enumerate(cached):
        if row >= 0:
            block[n] = snapshot.block[row]
    assembled[:, ITEM_COLUMNS] = block
    expected_items = [rows[c].values if c in rows and c != "i-5" else None for c in candidates]
    expected = feature_matrix(user, expected_items, metas, NOW_MS)
    np.testing.assert_array_equal(assembled, expected)


def test_merging_a_partial_read_updates_and_appends_rows() -> None:
    _, rows = live_rows()
    snapshot = ItemSnapshot.build({"i-1": rows["i-1"]}, NOW_MS)
    merged = snapshot.merged({"i-1": rows["i-4"], "i-2": rows["i-2"]})
    assert set(merged.index) == {"i-1", "i-2"} and merged.refreshed_ms == NOW_MS
    fresh = ItemSnapshot.build({"i-1": rows["i-4"], "i-2": rows["i-2"]}, NOW_MS)
    for item_id in ("i-1", "i-2"):
        np.testing.assert_array_equal(merged.block[merged.index[item_id]], fresh.block[fresh.index[item_id]])
    assert snapshot.index == {"i-1": 0}  # the old snapshot is untouched (requests may hold it)


def test_catalog_loads_and_reloads_on_change(tmp_path: Path) -> None:
    path = tmp_path / "catalog.parquet"
    catalog = Catalog(path)
    assert not catalog.reload_if_changed() and len(catalog) == 0  # no file yet: empty, no error
    write_catalog(
        [CatalogItem("a", "news", "c1", 0.0, 100, 1000), CatalogItem("b", "sport", "c1", 0.0, 200, 2000)], path
    )
    assert catalog.reload_if_changed()
    assert catalog.get("a") == ItemMeta("a", "news", 100, 1000) and catalog.newest() == ["b", "a"]
    assert not catalog.reload_if_changed()
    write_catalog([CatalogItem("c", "music", "c2", 0.0, 300, 3000)], path)
    os.utime(path, ns=(10**18, 10**18))
    assert catalog.reload_if_changed() and catalog.ids() == ["c"]


def test_aligned_catalog_columns_give_feature_matrix_for_the_candidates(tmp_path: Path) -> None:
    path = tmp_path / "catalog.parquet"
    write_catalog(
        [
            CatalogItem("a", "news", "c1", 0.0, NOW_MS - 3_600_000, 30_000),
            CatalogItem("b", "sport", "c1", 0.0, NOW_MS - 60_000, 5_000),
            CatalogItem("c", "news", "c2", 0.0, NOW_MS, 1_000),
        ],
        path,
    )
    catalog = Catalog(path)
    assert catalog.reload_if_changed()
    user, rows = live_rows()
    user["user_last_item_ids"] = ["b", "zz"]
    candidates = ["c", "unknown", "a", "b"]
    aligned = catalog.aligned(candidates)
    block = np.full((len(candidates), len(ITEM_COLUMNS)), np.nan, dtype=np.float32)
    got = feature_matrix_columns(user, block, aligned, candidates, NOW_MS)
    expected = feature_matrix(user, [None] * len(candidates), [catalog.get(c) for c in candidates], NOW_MS)
    np.testing.assert_array_equal(got, expected)
    assert aligned.known.tolist() == [True, False, True, True, False]  # the sentinel row stays last
    assert aligned.category_names() == ["news", None, "news", "sport"]


def same_columns(got: CatalogColumns, expected: CatalogColumns) -> None:
    np.testing.assert_array_equal(got.known, expected.known)
    np.testing.assert_array_equal(got.created_ms, expected.created_ms)
    np.testing.assert_array_equal(got.duration_ms, expected.duration_ms)
    assert got.category_names() == expected.category_names()


def test_catalog_rows_found_at_refresh_give_the_aligned_catalog_until_it_reloads() -> None:
    _, rows = live_rows()
    catalog = Catalog(Path("unused"))
    catalog.load([ItemMeta("i-1", "news", 100, 1000), ItemMeta("i-3", "sport", 300, 3000), ItemMeta("x", "a", 1, 1)])
    snapshot = ItemSnapshot.build(rows, NOW_MS).with_catalog(catalog)
    cache = ItemFeatureCache(InMemoryOnlineStore(), catalog, ServingMetrics(), 30.0, 1000)
    cache.snapshot = snapshot
    for candidates in (["i-3", "i-0", "i-1", "i-5"], ["i-1", "x", "i-2"], []):  # all cached; one not cached; none
        same_columns(cache.lookup(candidates).catalog(catalog, candidates), catalog.aligned(candidates))
    # Items merged in by a quick read get their catalog rows too.
    cache.snapshot = snapshot.merged({"x": rows["i-2"]})
    same_columns(cache.lookup(["x", "i-1"]).catalog(catalog, ["x", "i-1"]), catalog.aligned(["x", "i-1"]))
    # A reloaded catalog (other rows, other order) is read as such, not through the snapshot's old rows.
    catalog.load([ItemMeta("i-3", "music", 5, 5), ItemMeta("i-1", "sport", 7, 7)])
    reloaded = cache.lookup(["i-1", "i-3", "i-0"]).catalog(catalog, ["i-1", "i-3", "i-0"])
    same_columns(reloaded, catalog.aligned(["i-1", "i-3", "i-0"]))
    assert reloaded.category_names() == ["sport", "music", None]
