"""The ranker's input layout: which numbers, in which order, the model sees for one (user, item) pair.

Training (`training/dataset.py`) and the feed API both build the model input with
`feature_matrix`, so the two cannot disagree on a column's meaning or order. A model
is registered with `RANKER_FEATURES` as its feature list and the API refuses a model
whose list differs: append new columns at the end and retrain, never reorder.

Columns, in order:

* every numeric user feature of `USER_FEATURES` (int64/float64), in contract order;
* every numeric item feature of `ITEM_FEATURES`, in contract order;
* item catalog features: `item_age_hours` (now - created, clamped at 0) and
  `item_duration_seconds`;
* cross features from the user's list features and the item:
  `cross_category_affinity` (the user's affinity share of the item's category, 0 when
  the category is not among the user's top categories), `cross_category_rank`
  (1 = the user's favourite category, AFFINITY_TOP_K + 1 when absent),
  `cross_seen_recently` (1 if the item is in user_last_item_ids) and
  `cross_seen_rank` (1 = the most recent item, LAST_ITEMS_MAX + 1 when absent).

The slate position is deliberately not an input: serving ranks before positions exist.

Missing data is NaN, never an error: no user row makes the user and cross columns NaN,
no item row the item columns, no `ItemMeta` (or a None field in it) the catalog and
cross columns that need it. LightGBM routes NaN down the branch it learned for
missing values, so the API degrades instead of failing.

Pure: numpy only, no I/O, no clock (`now_ms` is a parameter), no model import.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from features.definitions import (
    AFFINITY_TOP_K,
    HOUR_MS,
    ITEM_FEATURES,
    LAST_ITEMS_MAX,
    SECOND_MS,
    USER_FEATURES,
    FeatureValue,
)

_NUMERIC = ("int64", "float64")

USER_RANKER_FEATURES: Final = tuple(spec.name for spec in USER_FEATURES if spec.dtype in _NUMERIC)
ITEM_RANKER_FEATURES: Final = tuple(spec.name for spec in ITEM_FEATURES if spec.dtype in _NUMERIC)
CATALOG_RANKER_FEATURES: Final = ("item_age_hours", "item_duration_seconds")
CROSS_RANKER_FEATURES: Final = (
    "cross_category_affinity",
    "cross_category_rank",
    "cross_seen_recently",
    "cross_seen_rank",
)

RANKER_FEATURES: Final[tuple[str, ...]] = (
    USER_RANKER_FEATURES + ITEM_RANKER_FEATURES + CATALOG_RANKER_FEATURES + CROSS_RANKER_FEATURES
)
"""Ordered names of the model's input columns; see the module docstring."""

_N_USER = len(USER_RANKER_FEATURES)
_N_ITEM = len(ITEM_RANKER_FEATURES)
_ITEM_START = _N_USER
_CATALOG_START = _ITEM_START + _N_ITEM
_CROSS_START = _CATALOG_START + len(CATALOG_RANKER_FEATURES)
_ABSENT_CATEGORY_RANK = float(AFFINITY_TOP_K + 1)
_ABSENT_SEEN_RANK = float(LAST_ITEMS_MAX + 1)

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ItemMeta:
    """Batch catalog data of one item; None where the catalog does not know."""

    item_id: str
    category: str | None
    created_ms: int | None
    duration_ms: int | None


def _number(value: FeatureValue | None) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return np.nan


def _numeric_rows(rows: Sequence[Mapping[str, FeatureValue | None]], names: Sequence[str]) -> npt.NDArray[np.float64]:
    """(len(rows), len(names)) float64; None or a missing key -> NaN, a non-number -> NaN."""
    values = [[row.get(name) for name in names] for row in rows]
    try:
        # numpy turns None into NaN and ints into floats in one C loop: the fast path.
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        return np.array([[_number(v) for v in row] for row in values], dtype=np.float64)


def _str_list(value: FeatureValue | None) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value  # type: ignore[return-value]
    return None


def _float_list(value: FeatureValue | None) -> list[float] | None:
    if isinstance(value, list) and all(isinstance(v, int | float) for v in value):
        return [float(v) for v in value]
    return None


@dataclass(frozen=True)
class CatalogColumns:
    """Catalog data as parallel columns, one row per item; the last row is the "unknown item" row.

    Built once per catalog load (or per `feature_matrix` call); `take(rows)` aligns it to a
    candidate list with numpy gathers, so a request pays no Python loop per candidate for
    the catalog and cross columns. Row -1 (the sentinel) reads as an item without `ItemMeta`.
    """

    known: npt.NDArray[np.bool_]
    created_ms: npt.NDArray[np.float64]
    duration_ms: npt.NDArray[np.float64]
    category_code: npt.NDArray[np.intp]
    """Index into `categories`, -1 when the category is unknown."""
    categories: tuple[str, ...]

    @staticmethod
    def of(metas: Sequence[ItemMeta | None]) -> CatalogColumns:
        codes: dict[str, int] = {}
        for meta in metas:
            if meta is not None and meta.category is not None:
                codes.setdefault(meta.category, len(codes))
        rows = [*metas, None]  # the sentinel row

        def column(get: Callable[[ItemMeta], int | None]) -> npt.NDArray[np.float64]:
            return np.array(
                [np.nan if m is None or (value := get(m)) is None else value for m in rows], dtype=np.float64
            )

        return CatalogColumns(
            known=np.array([m is not None for m in rows], dtype=bool),
            created_ms=column(lambda m: m.created_ms),
            duration_ms=column(lambda m: m.duration_ms),
            category_code=np.array(
                [-1 if m is None or m.category is None else codes[m.category] for m in rows], dtype=np.intp
            ),
            categories=tuple(codes),
        )

    def take(self, rows: npt.NDArray[np.intp]) -> CatalogColumns:
        """The rows `rows` (-1 = unknown item) as a new aligned table, sentinel row appended again."""
        picked = np.append(rows, -1)
        return CatalogColumns(
            known=self.known[picked],
            created_ms=self.created_ms[picked],
            duration_ms=self.duration_ms[picked],
            category_code=self.category_code[picked],
            categories=self.categories,
        )

    def __len__(self) -> int:
        return len(self.known) - 1

    def category_names(self) -> list[str | None]:
        """Each row's category name (None when unknown), without a Python loop over the rows."""
        names = np.array([*self.categories, None], dtype=object)  # code -1 reads the trailing None
        return names[self.category_code[:-1]].tolist()  # type: ignore[no-any-return]


def feature_matrix(
    user: Mapping[str, FeatureValue | None] | None,
    items: Sequence[Mapping[str, FeatureValue | None] | None],
    metas: Sequence[ItemMeta | None],
    now_ms: int,
) -> FloatMatrix:
    """The model input for one user and a list of candidate items: float32, (len(items), len(RANKER_FEATURES)).

    `items[i]` and `metas[i]` describe the same candidate; both must have the same length.
    Missing rows or values give NaN (see the module docstring).
    """
    n = len(items)
    if len(metas) != n:
        raise ValueError(f"items and metas must be parallel: {n} items, {len(metas)} metas")
    ids = [m.item_id if m is not None else "" for m in metas]
    return feature_matrix_columns(user, item_columns(items), CatalogColumns.of(metas), ids, now_ms)


def item_columns(items: Sequence[Mapping[str, FeatureValue | None] | None]) -> npt.NDArray[np.float64]:
    """The item part of the matrix: (len(items), len(ITEM_RANKER_FEATURES)), NaN for a missing row or value."""
    n = len(items)
    block = np.full((n, _N_ITEM), np.nan, dtype=np.float64)
    present = [item for item in items if item is not None]
    if len(present) == n and n:
        block[:] = _numeric_rows(present, ITEM_RANKER_FEATURES)
    elif present:
        rows = [i for i, item in enumerate(items) if item is not None]
        block[rows] = _numeric_rows(present, ITEM_RANKER_FEATURES)
    return block


def declared_columns(
    rows: Sequence[Mapping[str, FeatureValue | None] | None], names: Sequence[str]
) -> npt.NDArray[np.float32]:
    """(len(rows), len(names)): declared stream features (`"<view>:<feature>"`, appended after RANKER_FEATURES
    for a model trained with them) of each row by name; NaN for a missing row, value or null."""
    out = np.full((len(rows), len(names)), np.nan, dtype=np.float32)
    for r, values in enumerate(rows):
        if values is not None:
            for c, name in enumerate(names):
                value = values.get(name)
                if isinstance(value, int | float):
                    out[r, c] = value
    return out


def feature_matrix_columns(
    user: Mapping[str, FeatureValue | None] | None,
    item_block: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    catalog: CatalogColumns,
    item_ids: Sequence[str],
    now_ms: int,
) -> FloatMatrix:
    """`feature_matrix` from columns: the item columns already laid out, the catalog aligned to the candidates.

    `item_block` is (n, len(ITEM_RANKER_FEATURES)) in `ITEM_RANKER_FEATURES` order (NaN = no
    row), `catalog` holds n rows (`CatalogColumns.take`) and `item_ids[i]` names candidate i.
    """
    n = len(item_ids)
    if item_block.shape != (n, _N_ITEM) or len(catalog) != n:
        raise ValueError(
            f"columns must be parallel: {n} ids, item block {item_block.shape}, {len(catalog)} catalog rows"
        )
    # Built in float32: every value is computed in float64 and rounded once on assignment, exactly as
    # the float64 matrix cast at the end did, without a 2x larger matrix to fill and cast per request.
    out = np.full((n, len(RANKER_FEATURES)), np.nan, dtype=np.float32)
    if n == 0:
        return out
    if user is not None:
        out[:, :_N_USER] = _numeric_rows([user], USER_RANKER_FEATURES)[0].astype(np.float32)
    out[:, _ITEM_START:_CATALOG_START] = item_block
    created = catalog.created_ms[:n]
    with np.errstate(invalid="ignore"):
        out[:, _CATALOG_START] = np.maximum((now_ms - created) / HOUR_MS, 0.0)
    out[:, _CATALOG_START + 1] = catalog.duration_ms[:n] / SECOND_MS
    if user is not None:
        _cross(out, user, catalog, item_ids)
    return out


def _cross(
    out: FloatMatrix,
    user: Mapping[str, FeatureValue | None],
    catalog: CatalogColumns,
    item_ids: Sequence[str],
) -> None:
    n = len(item_ids)
    categories = _str_list(user.get("user_affinity_categories"))
    scores = _float_list(user.get("user_affinity_scores"))
    last_items = _str_list(user.get("user_last_item_ids"))
    c = _CROSS_START
    if categories is not None and scores is not None and len(categories) == len(scores):
        # Per category code: the user's score and rank; the extra last slot is code -1 (unknown) -> NaN.
        affinity = np.zeros(len(catalog.categories) + 1, dtype=np.float64)
        rank = np.full(len(catalog.categories) + 1, _ABSENT_CATEGORY_RANK, dtype=np.float64)
        affinity[-1] = rank[-1] = np.nan
        code_of = {name: code for code, name in enumerate(catalog.categories)}
        for position, (category, score) in enumerate(zip(categories, scores, strict=True), 1):
            code = code_of.get(category)
            if code is not None:  # a repeated category: the later entry wins
                affinity[code] = score
                rank[code] = float(position)
        codes = catalog.category_code[:n]
        out[:, c] = affinity[codes]
        out[:, c + 1] = rank[codes]
    if last_items is not None:
        seen_rank = {item_id: float(position) for position, item_id in enumerate(last_items, 1)}
        # map over dict.get with a repeated default: the loop over the candidates stays in C.
        ranks = np.fromiter(
            map(seen_rank.get, item_ids, itertools.repeat(_ABSENT_SEEN_RANK, n)), dtype=np.float64, count=n
        )
        ranks[~catalog.known[:n]] = np.nan
        out[:, c + 2] = np.where(np.isnan(ranks), np.nan, (ranks < _ABSENT_SEEN_RANK).astype(np.float64))
        out[:, c + 3] = ranks
