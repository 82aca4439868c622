"""The item catalog parquet: its schema, its writer and the one reader everybody uses.

One row per item: `item_id` (required) and `category`, `creator_id`, `quality`,
`created_ms`, `duration_ms` (each may be null or absent). `freshrank generate`
writes the synthetic world's catalog here, `freshrank datasets fetch` MovieLens';
the stream job (categories), the feed API and training (`ItemMeta`) and the
benchmarks read it with `read_catalog`. The writer replaces the file atomically,
so a reader that polls it never sees half a file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

from features.ranking import ItemMeta
from simulator.errors import CatalogError
from simulator.parquet import write_atomically

CATALOG_SCHEMA: Final = pa.schema(
    [
        ("item_id", pa.string()),
        ("category", pa.string()),
        ("creator_id", pa.string()),
        ("quality", pa.float64()),
        ("created_ms", pa.int64()),
        ("duration_ms", pa.int64()),
    ]
)
_META_COLUMNS: Final = ("item_id", "category", "created_ms", "duration_ms")


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One item of the synthetic world's catalog, as written to the catalog parquet."""

    item_id: str
    category: str
    creator_id: str
    quality: float
    """Item quality on the logit scale (creator quality plus item noise), mean 0."""
    created_ms: int
    duration_ms: int

    @property
    def meta(self) -> ItemMeta:
        """What the ranker knows of the item (features.ranking.ItemMeta)."""
        return ItemMeta(self.item_id, self.category, self.created_ms, self.duration_ms)


def write_catalog(items: Iterable[CatalogItem | ItemMeta], path: Path) -> None:
    """Write the catalog as parquet (CATALOG_SCHEMA), atomically; columns an item does not have are null."""
    rows = list(items)
    columns = {name: [getattr(item, name, None) for item in rows] for name in CATALOG_SCHEMA.names}
    write_atomically(pa.table(columns, schema=CATALOG_SCHEMA), path)


def read_catalog(path: Path) -> list[ItemMeta]:
    """The items of a catalog parquet, in file order; rows without an item_id are skipped.

    Only `item_id` is required: a missing `category`, `created_ms` or `duration_ms`
    column reads as None, as does a null. Raises CatalogError when the file cannot be
    read (absent, torn, not parquet) or has no item_id column.
    """
    try:
        present = set(pq.read_schema(path).names)
        if "item_id" not in present:
            raise CatalogError(f"catalog {path} has no item_id column")
        table = pq.read_table(path, columns=[name for name in _META_COLUMNS if name in present])
    except (OSError, pa.ArrowException) as error:
        raise CatalogError(f"cannot read the catalog {path}: {error}") from None
    n = table.num_rows

    def column(name: str) -> list[object]:
        return table[name].to_pylist() if name in present else [None] * n

    return [
        ItemMeta(str(item_id), category, created, duration)
        for item_id, category, created, duration in zip(*(column(name) for name in _META_COLUMNS), strict=True)
        if item_id is not None
    ]
