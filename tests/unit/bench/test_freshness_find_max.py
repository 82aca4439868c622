"""The freshness benchmark's verdict on one trial: nothing lost, p99 under the bar."""

from __future__ import annotations

from typing import Any

from bench.freshness import sustained


def trial(lost: int = 0, p99: float = 400.0) -> dict[str, Any]:
    return {"lost": lost, "freshness_ms": {"p99": p99}}


def test_a_trial_is_sustained_only_if_it_lost_nothing_and_was_fresh() -> None:
    assert sustained(trial(), 1000)
    assert not sustained(trial(lost=1), 1000)
    assert not sustained(trial(p99=1000.0), 1000)
    assert not sustained(trial(p99=float("nan")), 1000)
