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

    def take(self, pool: list[int]) -> int:
        """Remove and return the first index of `pool` the run rule allows, else the first."""
        position = 0
        for offset, candidate in enumerate(pool):
            if self.allows(candidate):
                position = offset
                break
        index = pool.pop(position)
        self.tail.append(self.categories[index])
        return index


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
    order = np.argsort(-scores, kind="stable")
    taken = seen.copy()
    taken[explore] = True
    unseen: list[int] = order[~taken[order]].tolist()
    backfill: list[int] = order[seen[order]].tolist()
    slots = set(exploration_slots(min(k, n), len(explore)))

    runs = _RunTracker(categories, config.max_run)
    slate: list[Slot] = []
    for position in range(min(k, n)):
        if explore and (position in slots or not unseen):
            slate.append(Slot(runs.take(explore), explored=True))
        elif unseen:
            slate.append(Slot(runs.take(unseen), explored=False))
        elif backfill:
            slate.append(Slot(runs.take(backfill), explored=False))
    return slate


def fallback_scores(smoothed_ctr: FloatArray, prior_mean: float) -> FloatArray:
    """Scores without a model: the item's smoothed CTR (prior mean when unknown), ties kept in candidate order."""
    ctr = np.where(np.isnan(smoothed_ctr), prior_mean, smoothed_ctr)
    return np.asarray(ctr - 1e-9 * np.arange(len(ctr)), dtype=np.float64)
