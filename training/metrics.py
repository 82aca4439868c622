"""Offline ranking metrics: AUC, log loss, NDCG@k over slates. numpy only, exact tie handling."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.generic]
_EPS = 1e-7


def auc(scores: Array, labels: Array) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties count one half); None when one class is absent."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # Average rank of each run of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(s)]])
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def log_loss(probabilities: Array, labels: Array) -> float | None:
    """Mean binary cross-entropy; None for an empty input."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels, dtype=bool)
    if len(y) == 0:
        return None
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def ndcg_at_k(scores: Array, labels: Array, groups: Array, k: int = 10, seed: int = 0) -> float | None:
    """Mean NDCG@k over groups (slates) with at least one positive; binary gains, log2 discounts.

    Ties in a score are broken by a seeded random permutation, so no scorer gains from the
    order rows happen to be stored in (which is the logged position order). None when no
    group has a positive.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    g = np.asarray(groups)
    if len(s) == 0:
        return None
    jitter = np.random.default_rng(seed).permutation(len(s))
    order = np.lexsort((jitter, -s, g))
    g_sorted, y_sorted = g[order], y[order]
    starts = np.flatnonzero(np.concatenate([[True], g_sorted[1:] != g_sorted[:-1]]))
    sizes = np.diff(np.concatenate([starts, [len(g_sorted)]]))
    rank = np.arange(len(g_sorted)) - np.repeat(starts, sizes)
    discount = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    dcg = np.add.reduceat(y_sorted * discount, starts)
    # Ideal: the group's positives in its first ranks.
    positives = np.add.reduceat(y_sorted, starts)
    cumulative = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
    idcg = cumulative[np.minimum(positives, k).astype(np.int64)]
    valid = positives > 0
    if not valid.any():
        return None
    return float(np.mean(dcg[valid] / idcg[valid]))


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)
