"""The catalog parquet: one writer, one reader that needs only item_id and says what is wrong with a bad file."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.ranking import ItemMeta
from simulator.catalog import CatalogItem, read_catalog, write_catalog
from simulator.errors import CatalogError


def test_items_without_creator_or_dates_round_trip_as_nulls(tmp_path: Path) -> None:
    path = tmp_path / "catalog.parquet"
    metas = [ItemMeta("ml-item-1", "Drama", None, None), ItemMeta("ml-item-2", None, 1_600_000_000_000, None)]
    write_catalog([CatalogItem("a", "news", "c1", 0.5, 100, 1000), *metas], path)
    assert read_catalog(path) == [ItemMeta("a", "news", 100, 1000), *metas]


def test_only_item_id_is_required_and_rows_without_one_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "catalog.parquet"
    pq.write_table(pa.table({"item_id": ["a", None, "b"], "category": ["x", "y", None]}), path)
    assert read_catalog(path) == [ItemMeta("a", "x", None, None), ItemMeta("b", None, None, None)]


def test_a_file_without_item_id_or_torn_is_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.parquet"
    pq.write_table(pa.table({"category": ["x"]}), path)
    with pytest.raises(CatalogError, match="no item_id column"):
        read_catalog(path)
    write_catalog([CatalogItem("a", "news", "c1", 0.0, 100, 1000)], path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CatalogError, match="cannot read the catalog"):
        read_catalog(path)
    with pytest.raises(CatalogError, match="cannot read the catalog"):
        read_catalog(tmp_path / "absent.parquet")
