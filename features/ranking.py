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

from collections.abc import Mapping, Sequence
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
    out = np.full((n, len(RANKER_FEATURES)), np.nan, dtype=np.float64)
    if n == 0:
        return out.astype(np.float32)

    if user is not None:
        out[:, :_N_USER] = _numeric_rows([user], USER_RANKER_FEATURES)[0]

    present = [item for item in items if item is not None]
    if len(present) == n:
        out[:, _ITEM_START:_CATALOG_START] = _numeric_rows(present, ITEM_RANKER_FEATURES)
    elif present:
        rows = [i for i, item in enumerate(items) if item is not None]
        out[rows, _ITEM_START:_CATALOG_START] = _numeric_rows(present, ITEM_RANKER_FEATURES)

    created = np.array([np.nan if m is None or m.created_ms is None else m.created_ms for m in metas], dtype=np.float64)
    duration = np.array(
        [np.nan if m is None or m.duration_ms is None else m.duration_ms for m in metas], dtype=np.float64
    )
    with np.errstate(invalid="ignore"):
        out[:, _CATALOG_START] = np.maximum((now_ms - created) / HOUR_MS, 0.0)
    out[:, _CATALOG_START + 1] = duration / SECOND_MS

    if user is not None:
        _cross(out, user, metas)
    return out.astype(np.float32)


def _cross(
    out: npt.NDArray[np.float64], user: Mapping[str, FeatureValue | None], metas: Sequence[ItemMeta | None]
) -> None:
    categories = _str_list(user.get("user_affinity_categories"))
    scores = _float_list(user.get("user_affinity_scores"))
    last_items = _str_list(user.get("user_last_item_ids"))
    c = _CROSS_START
    if categories is not None and scores is not None and len(categories) == len(scores):
        ranked = enumerate(zip(categories, scores, strict=True), 1)
        by_category = {cat: (score, float(rank)) for rank, (cat, score) in ranked}
        absent = (0.0, _ABSENT_CATEGORY_RANK)
        pairs = [
            (np.nan, np.nan) if m is None or m.category is None else by_category.get(m.category, absent) for m in metas
        ]
        out[:, c : c + 2] = pairs
    if last_items is not None:
        seen_rank = {item_id: float(rank) for rank, item_id in enumerate(last_items, 1)}
        ranks = np.array(
            [np.nan if m is None else seen_rank.get(m.item_id, _ABSENT_SEEN_RANK) for m in metas], dtype=np.float64
        )
        out[:, c + 2] = np.where(np.isnan(ranks), np.nan, (ranks < _ABSENT_SEEN_RANK).astype(np.float64))
        out[:, c + 3] = ranks
