"""Metrics against brute-force definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from training.metrics import auc, log_loss, ndcg_at_k


def brute_auc(scores: list[float], labels: list[bool]) -> float:
    pairs = [(p, n) for p, n in itertools.product(range(len(scores)), repeat=2) if labels[p] and not labels[n]]
    return sum(1.0 if scores[p] > scores[n] else 0.5 if scores[p] == scores[n] else 0.0 for p, n in pairs) / len(pairs)


def test_auc_matches_pair_counting_with_ties() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 60).astype(float).tolist()
    labels = (rng.random(60) < 0.3).tolist()
    assert auc(np.array(scores), np.array(labels)) == pytest.approx(brute_auc(scores, labels))
    assert auc(np.array([0.1, 0.2]), np.array([True, True])) is None


def test_log_loss() -> None:
    assert log_loss(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(math.log(2))


def test_ndcg_per_slate_skips_slates_without_positives() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.2, 0.8])
    labels = np.array([False, True, True, False, False, False])
    groups = np.array([1, 1, 2, 2, 3, 3])
    # Slate 1: the positive is ranked 2nd -> 1/log2(3); slate 2: ranked 1st -> 1; slate 3 has no positive.
    assert ndcg_at_k(scores, labels, groups) == pytest.approx((1 / math.log2(3) + 1.0) / 2)
    assert ndcg_at_k(scores, labels, groups, k=1) == pytest.approx(0.5)


def test_ndcg_breaks_ties_independently_of_row_order() -> None:
    labels = np.array([True] + [False] * 9)
    flat = np.zeros(10)
    groups = np.zeros(10, dtype=int)
    # With all scores equal, a positive stored first must not get rank 1 for free.
    assert ndcg_at_k(flat, labels, groups) < 1.0
