"""Slate policies: seen filter, diversity runs, exploration slots chosen by Thompson sampling."""

from __future__ import annotations

import numpy as np
import pytest

from serving.policies import (
    PolicyConfig,
    best_first,
    choose_slate,
    exploration_slots,
    fallback_scores,
    thompson_order,
)

NO_EXPLORE = PolicyConfig(exploration_share=0.0)


def slate(
    scores: list[float],
    categories: list[str | None],
    k: int,
    config: PolicyConfig = NO_EXPLORE,
    seen: list[bool] | None = None,
    explorable: list[bool] | None = None,
    clicks: list[float] | None = None,
    impressions: list[float] | None = None,
    seed: int = 0,
) -> list[tuple[int, bool]]:
    n = len(scores)
    chosen = choose_slate(
        np.array(scores, dtype=np.float64),
        categories,
        np.array(seen or [False] * n),
        np.array(explorable or [False] * n),
        np.array(clicks or [0.0] * n),
        np.array(impressions or [0.0] * n),
        k,
        config,
        np.random.default_rng(seed),
    )
    return [(s.index, s.explored) for s in chosen]


def longest_run(categories: list[str | None]) -> int:
    best = run = 0
    for i, c in enumerate(categories):
        run = run + 1 if i and c is not None and c == categories[i - 1] else 1
        best = max(best, run)
    return best


def test_pure_score_order_without_constraints() -> None:
    assert slate([0.1, 0.9, 0.5], ["a", "b", "c"], k=3) == [(1, False), (2, False), (0, False)]


def test_no_more_than_two_consecutive_items_of_one_category_when_others_exist() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.1]
    categories = ["news", "news", "news", "news", "sport", "music"]
    chosen = [i for i, _ in slate(scores, categories, k=6)]
    assert chosen[:3] == [0, 1, 4]  # the third news item waits for the best other category
    assert longest_run([categories[i] for i in chosen[:5]]) <= 2


def test_runs_are_allowed_when_only_one_category_is_left() -> None:
    chosen = [i for i, _ in slate([0.9, 0.8, 0.7, 0.6], ["news"] * 4, k=4)]
    assert chosen == [0, 1, 2, 3]


def test_unknown_categories_never_break_a_run() -> None:
    chosen = [i for i, _ in slate([0.9, 0.8, 0.7], [None, None, None], k=3)]
    assert chosen == [0, 1, 2]


def test_seen_items_go_last_and_only_fill_when_needed() -> None:
    scores = [0.9, 0.8, 0.1]
    seen = [True, False, False]
    assert [i for i, _ in slate(scores, ["a", "b", "c"], k=2, seen=seen)] == [1, 2]
    assert [i for i, _ in slate(scores, ["a", "b", "c"], k=3, seen=seen)] == [1, 2, 0]


def test_exploration_slots_are_spread_below_the_top() -> None:
    assert exploration_slots(10, 1) == [5]
    assert exploration_slots(20, 2) == [6, 13]
    assert 0 not in exploration_slots(3, 2)


def test_exploration_takes_share_of_slots_for_new_items_only() -> None:
    n = 40
    scores = list(np.linspace(1.0, 0.0, n))
    explorable = [i >= 30 for i in range(n)]  # only the 10 worst-scored items are new
    config = PolicyConfig(exploration_share=0.1)
    chosen = slate(scores, [f"c{i % 7}" for i in range(n)], k=20, config=config, explorable=explorable)
    explored = [(pos, i) for pos, (i, was_explored) in enumerate(chosen) if was_explored]
    assert [pos for pos, _ in explored] == [6, 13]
    assert all(i >= 30 for _, i in explored)
    assert len({i for i, _ in chosen}) == 20


def test_thompson_sampling_prefers_items_without_evidence_over_items_that_keep_failing() -> None:
    # Item 0: 1000 impressions, 0 clicks. Item 1: no evidence. Both new, both low-scored.
    config = PolicyConfig(exploration_share=0.1)
    wins = 0
    for seed in range(200):
        chosen = slate(
            [0.9] * 10 + [0.0, 0.0],
            [f"c{i}" for i in range(12)],
            k=10,
            config=config,
            explorable=[False] * 10 + [True, True],
            clicks=[0.0] * 12,
            impressions=[0.0] * 10 + [1000.0, 0.0],
            seed=seed,
        )
        explored = [i for i, was_explored in chosen if was_explored]
        assert len(explored) == 1
        wins += explored[0] == 11
    assert wins > 180


def test_same_seed_same_slate() -> None:
    args = ([0.5] * 30, [f"c{i % 3}" for i in range(30)], 10)
    config = PolicyConfig(exploration_share=0.3)
    explorable = [True] * 30
    assert slate(*args, config=config, explorable=explorable, seed=7) == slate(
        *args, config=config, explorable=explorable, seed=7
    )


def test_empty_candidates_give_an_empty_slate() -> None:
    assert slate([], [], k=10) == []


def test_fallback_scores_use_ctr_then_candidate_order() -> None:
    scores = fallback_scores(np.array([np.nan, 0.2, np.nan]), prior_mean=0.05)
    assert list(np.argsort(-scores)) == [1, 0, 2]


def full_sort_slate(
    scores: np.ndarray,
    categories: list[str | None],
    seen: np.ndarray,
    explore: list[int],
    k: int,
    max_run: int,
) -> list[tuple[int, bool]]:
    """The slate walk as first written: the whole candidate list sorted, then walked (the reference)."""
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    taken = seen.copy()
    taken[explore] = True
    unseen = order[~taken[order]].tolist()
    backfill = order[seen[order]].tolist()
    explore = list(explore)
    slots = set(exploration_slots(min(k, n), len(explore)))
    tail: list[str | None] = []

    def take(pool: list[int]) -> int:
        position = 0
        for offset, candidate in enumerate(pool):
            category = categories[candidate]
            if category is None or len(tail) < max_run or tail[-max_run:].count(category) < max_run:
                position = offset
                break
        index = pool.pop(position)
        tail.append(categories[index])
        return index

    out: list[tuple[int, bool]] = []
    for position in range(min(k, n)):
        if explore and (position in slots or not unseen):
            out.append((take(explore), True))
        elif unseen:
            out.append((take(unseen), False))
        elif backfill:
            out.append((take(backfill), False))
    return out


@pytest.mark.parametrize("seed", range(300))
def test_the_partial_sort_gives_the_slate_of_the_full_sort(seed: int) -> None:
    # Ties (few distinct scores), one dominant category (the walk runs past the sorted head),
    # many seen items, unknown categories, k above and below the candidate count.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    k = int(rng.integers(1, 60))
    distinct = int(rng.choice([2, 5, 1000]))
    scores = rng.integers(0, distinct, n) / distinct
    names = ["a", "b", "c", None][: int(rng.integers(1, 5))]
    weights = rng.dirichlet(np.ones(len(names)) * rng.choice([0.1, 1.0]))
    categories = [names[i] for i in rng.choice(len(names), n, p=weights)]
    seen = rng.random(n) < rng.choice([0.0, 0.1, 0.9])
    explorable = rng.random(n) < 0.2
    clicks = rng.integers(0, 5, n).astype(np.float64)
    impressions = clicks + rng.integers(0, 50, n)
    config = PolicyConfig(exploration_share=float(rng.choice([0.0, 0.1, 0.3])), max_run=int(rng.integers(1, 3)))
    chosen = choose_slate(
        scores, categories, seen, explorable, clicks, impressions, k, config, np.random.default_rng(seed)
    )
    # The exploration picks come from the same draws; the reference walks with them.
    n_explore = int(k * config.exploration_share)
    candidates = np.flatnonzero(explorable & ~seen)
    picks: list[int] = []
    if n_explore and len(candidates):
        ranked = thompson_order(
            clicks[candidates],
            impressions[candidates],
            np.random.default_rng(seed),
            config.prior_alpha,
            config.prior_beta,
        )
        picks = candidates[ranked[:n_explore]].tolist()
    expected = full_sort_slate(scores, categories, seen, picks, k, config.max_run)
    assert [(slot.index, slot.explored) for slot in chosen] == expected


@pytest.mark.parametrize("limit", [0, 1, 3, 7, 10, 11])
def test_best_first_is_the_head_of_the_stable_sort(limit: int) -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.9, 0.5, 0.5, 0.0, 0.9, 0.5])
    assert best_first(scores, limit).tolist() == np.argsort(-scores, kind="stable")[:limit].tolist()
