"""Slate policies: seen filter, diversity runs, exploration slots chosen by Thompson sampling."""

from __future__ import annotations

import numpy as np

from serving.policies import PolicyConfig, choose_slate, exploration_slots, fallback_scores

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
