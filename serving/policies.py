"""Business rules between the model's scores and the slate: seen filter, exploration, diversity.

Pure numpy and Python; randomness comes from the `rng` argument (seeded per
request), so a request id reproduces its slate.

* Seen: candidates the user recently interacted with go last; they only fill
  slots when too few unseen candidates remain.
* Exploration: `floor(k * share)` slots, spread evenly below the top slot, go to
  new items chosen by Thompson sampling: each eligible item draws
  theta ~ Beta(alpha + clicks, beta + non-clicked impressions) and the highest
  draws win, so items with little evidence get shown and items that keep
  failing stop being picked.
* Diversity: walking down the slate, an item whose category would make a run of
  more than `max_run` is passed over for the best item that does not, unless
  none is left (fewer categories than the rule needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Slot:
    """Candidate `index` placed at this slot; `explored` if an exploration slot chose it."""

    index: int
    explored: bool


@dataclass(frozen=True)
class PolicyConfig:
    exploration_share: float = 0.1
    max_run: int = 2
    prior_alpha: float = 1.0
    prior_beta: float = 19.0


def exploration_slots(k: int, n_explore: int) -> list[int]:
    """Evenly spaced slots below the top one: k=10, 1 -> [5]; k=20, 2 -> [6, 13]."""
    return [(j + 1) * k // (n_explore + 1) for j in range(n_explore)]


def thompson_order(
    clicks: FloatArray, impressions: FloatArray, rng: np.random.Generator, alpha: float, beta: float
) -> npt.NDArray[np.intp]:
    """Indices ordered by one Beta posterior draw each, highest first."""
    failures = np.maximum(impressions - clicks, 0.0)
    draws = rng.beta(alpha + np.maximum(clicks, 0.0), beta + failures)
    return np.argsort(-draws, kind="stable")


class _Incomplete(Exception):
    """The walk needed a candidate beyond the part of the score order it was given."""


class _RunTracker:
    def __init__(self, categories: Sequence[str | None], max_run: int) -> None:
        self.categories = categories
        self.max_run = max_run
        self.tail: list[str | None] = []

    def allows(self, index: int) -> bool:
        category = self.categories[index]
        if category is None or len(self.tail) < self.max_run:
            return True
        return self.tail[-self.max_run :].count(category) < self.max_run

    def take(self, pool: list[int], complete: bool = True) -> int:
        """Remove and return the first index of `pool` the run rule allows, else the first.

        `complete=False`: `pool` is only the head of the real pool, so "none allowed" cannot be
        decided here and raises `_Incomplete`.
        """
        position = -1
        for offset, candidate in enumerate(pool):
            if self.allows(candidate):
                position = offset
                break
        if position < 0:
            if not complete:
                raise _Incomplete
            position = 0
        index = pool.pop(position)
        self.tail.append(self.categories[index])
        return index


def best_first(scores: FloatArray, limit: int) -> npt.NDArray[np.intp]:
    """The `limit` best indices by score, highest first, ties in index order: the head of
    `np.argsort(-scores, kind="stable")`, found with a partial sort (argpartition) when `limit < len(scores)`."""
    n = len(scores)
    negated = -scores
    if limit >= n:
        return np.argsort(negated, kind="stable")
    if limit <= 0:
        return np.empty(0, dtype=np.intp)
    # argpartition breaks ties at the boundary arbitrarily: keep every index strictly better than the
    # limit-th value, then the tied ones in index order, as the stable sort would.
    threshold = negated[np.argpartition(negated, limit - 1)[limit - 1]]
    better = np.flatnonzero(negated < threshold)
    tied = np.flatnonzero(negated == threshold)[: limit - len(better)]
    chosen = np.concatenate([better, tied])
    return chosen[np.argsort(negated[chosen], kind="stable")]


def choose_slate(
    scores: FloatArray,
    categories: Sequence[str | None],
    seen: BoolArray,
    explorable: BoolArray,
    clicks: FloatArray,
    impressions: FloatArray,
    k: int,
    config: PolicyConfig,
    rng: np.random.Generator,
) -> list[Slot]:
    """The slate: at most k slots, each a candidate index; see the module docstring for the rules."""
    n = len(scores)
    if n == 0 or k <= 0:
        return []
    explore: list[int] = []
    n_explore = int(k * config.exploration_share)
    candidates = np.flatnonzero(explorable & ~seen)
    if n_explore and len(candidates):
        ranked = thompson_order(clicks[candidates], impressions[candidates], rng, config.prior_alpha, config.prior_beta)
        explore = candidates[ranked[:n_explore]].tolist()
    # Seen items only backfill: their own order, best first (ties in index order).
    seen_indices = np.flatnonzero(seen)
    backfill: list[int] = seen_indices[np.argsort(-scores[seen_indices], kind="stable")].tolist()
    taken = seen.copy()
    taken[explore] = True
    n_slots = min(k, n)
    # A slate of k walks the head of the score order: k items plus what the run rule passes over.
    # Sorting only that head (a partial sort) is exact unless the walk runs past it (more than
    # 4k candidates of one category in a row), and then the walk is redone on the full order.
    head = 4 * n_slots + len(explore) + len(backfill)
    if head < n:
        try:
            return _walk(best_first(scores, head), taken, explore, backfill, categories, n_slots, config, False)
        except _Incomplete:
            pass
    return _walk(best_first(scores, n), taken, explore, backfill, categories, n_slots, config, True)


def _walk(
    order: npt.NDArray[np.intp],
    taken: BoolArray,
    explore: list[int],
    backfill: list[int],
    categories: Sequence[str | None],
    n_slots: int,
    config: PolicyConfig,
    complete: bool,
) -> list[Slot]:
    """Fill the slots from the exploration picks, the unseen candidates in `order` and the backfill.

    `complete=False`: `order` is only the head of the score order; raises `_Incomplete` when the walk
    would need a candidate beyond it.
    """
    unseen: list[int] = order[~taken[order]].tolist()
    explore, backfill = list(explore), list(backfill)
    slots = set(exploration_slots(n_slots, len(explore)))
    runs = _RunTracker(categories, config.max_run)
    slate: list[Slot] = []
    for position in range(n_slots):
        if not unseen and not complete:
            raise _Incomplete  # unseen candidates may remain beyond the head
        if explore and (position in slots or not unseen):
            slate.append(Slot(runs.take(explore), explored=True))
        elif unseen:
            slate.append(Slot(runs.take(unseen, complete), explored=False))
        elif backfill:
            slate.append(Slot(runs.take(backfill), explored=False))
    return slate


def fallback_scores(smoothed_ctr: FloatArray, prior_mean: float) -> FloatArray:
    """Scores without a model: the item's smoothed CTR (prior mean when unknown), ties kept in candidate order."""
    ctr = np.where(np.isnan(smoothed_ctr), prior_mean, smoothed_ctr)
    return np.asarray(ctr - 1e-9 * np.arange(len(ctr)), dtype=np.float64)
