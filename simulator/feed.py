"""The simulated feed (the logging policy): which items a request is shown, in which order.

It mixes popular items (decayed click counts), items from categories the user
currently likes, uniform random items and one fresh item, ordered by a noisy
popularity score: a learned ranker has signal to beat popularity with, and
position and popularity are confounded as in a real log.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from simulator.config import WorldConfig
from simulator.population import POPULARITY_TAU_MS, Items

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

POPULAR_POOL = 50
FRESH_WINDOW_MS = 3600 * 1000


class Feed:
    """Slates from the items that exist at request time; popularity learns from clicks."""

    def __init__(self, cfg: WorldConfig, items: Items) -> None:
        self.items = items
        self.slate_size, self.categories = cfg.slate_size, cfg.categories
        self.popularity: FloatArray = items.initial_popularity.copy()
        s = cfg.slate_size
        self.n_popular = round(0.4 * s)
        self.n_relevant = round(0.3 * s)
        self.n_random = s - self.n_popular - self.n_relevant

    def learn(self, t0: int, t1: int, slate: IntArray, clicked: BoolArray) -> None:
        """Popularity decays over [t0, t1) and counts the step's clicks."""
        self.popularity *= math.exp(-(t1 - t0) / POPULARITY_TAU_MS)
        self.popularity += np.bincount(slate[clicked], minlength=len(self.popularity))

    def slates(self, rng: np.random.Generator, times: IntArray, affinity: FloatArray, t0: int) -> IntArray:
        """Item indices, (requests, slate_size), in the order the simulated feed shows them."""
        n, s = len(times), self.slate_size
        created = self.items.created
        existing = np.searchsorted(created, times, side="right").astype(np.int64)[:, None]
        parts: list[IntArray] = []
        if self.n_popular:
            pool = self._popular_pool(t0)
            pick = (len(pool) * rng.random((n, self.n_popular)) ** 2).astype(np.int64)
            parts.append(pool[pick])
        if self.n_relevant:
            gumbel = rng.gumbel(size=(n, self.n_relevant, self.categories))
            categories = np.argmax(affinity[:, None, :] + gumbel, axis=2).astype(np.int64)
            parts.append(self._in_category(rng, categories, existing))
        n_uniform = self.n_random
        if self.n_random >= 2:
            # One exploration slot for items created within the last hour.
            n_uniform -= 1
            fresh_from = np.searchsorted(created, times - FRESH_WINDOW_MS).astype(np.int64)[:, None]
            fresh = fresh_from + (rng.random((n, 1)) * (existing - fresh_from)).astype(np.int64)
            parts.append(np.where(existing > fresh_from, fresh, rng.integers(0, existing, (n, 1))))
        if n_uniform:
            parts.append(rng.integers(0, existing, (n, n_uniform)))
        slate = np.concatenate(parts, axis=1).astype(np.int64)
        for _ in range(8):
            order = np.argsort(slate, axis=1, kind="stable")
            ordered = np.take_along_axis(slate, order, axis=1)
            repeated = np.zeros(ordered.shape, dtype=bool)
            repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
            if not repeated.any():
                break
            duplicate = np.zeros(slate.shape, dtype=bool)
            np.put_along_axis(duplicate, order, repeated, axis=1)
            rows = np.nonzero(duplicate)[0]
            slate[duplicate] = rng.integers(0, existing[rows, 0])
        # The logging policy: popular first, with plenty of noise.
        score = 0.6 * np.log1p(self.popularity[slate]) + rng.gumbel(size=(n, s))
        return np.take_along_axis(slate, np.argsort(-score, axis=1, kind="stable"), axis=1)

    def _popular_pool(self, t0: int) -> IntArray:
        existing = int(np.searchsorted(self.items.created, t0, side="right"))
        size = min(POPULAR_POOL, existing)
        top = np.argpartition(-self.popularity[:existing], size - 1)[:size]
        return top[np.argsort(-self.popularity[top], kind="stable")].astype(np.int64)

    def _in_category(self, rng: np.random.Generator, categories: IntArray, existing: IntArray) -> IntArray:
        """A uniformly random existing item of each given category (a random item if it has none)."""
        n_items = len(self.items.created)
        keys = self.items.by_category_key
        first = np.searchsorted(keys, categories * n_items)
        count = np.searchsorted(keys, categories * n_items + existing) - first
        offset = first + (rng.random(categories.shape) * count).astype(np.int64)
        fallback = rng.integers(0, existing, categories.shape)
        safe = np.where(count > 0, offset, 0)
        return np.where(count > 0, self.items.by_category[safe], fallback).astype(np.int64)
