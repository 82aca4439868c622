"""The freshness benchmark's verdict on one trial: nothing lost, p99 under the bar."""

from __future__ import annotations

import os
from collections import namedtuple
from typing import Any

import pytest

from bench.freshness import machine_busy_cores, sustained


def trial(lost: int = 0, p99: float = 400.0) -> dict[str, Any]:
    return {"lost": lost, "freshness_ms": {"p99": p99}}


def test_a_trial_is_sustained_only_if_it_lost_nothing_and_was_fresh() -> None:
    assert sustained(trial(), 1000)
    assert not sustained(trial(lost=1), 1000)
    assert not sustained(trial(p99=1000.0), 1000)
    assert not sustained(trial(p99=float("nan")), 1000)


def test_machine_busy_cores_counts_every_core_and_leaves_guest_time_out() -> None:
    Times = namedtuple("Times", "user nice system idle iowait guest guest_nice")
    before = Times(100.0, 0.0, 20.0, 500.0, 5.0, 50.0, 0.0)
    # 10 s of wall time on a machine of os.cpu_count() cores: 6 s busy (guest inside user), 4 s idle or waiting.
    after = Times(104.0, 0.0, 22.0, 503.0, 6.0, 53.0, 0.0)
    cores = os.cpu_count() or 1
    assert machine_busy_cores(before, after) == pytest.approx(cores * 0.6)
    assert machine_busy_cores(before, before) == 0.0


def test_the_scale_out_ratio_is_each_deployments_highest_rate_over_one_task_managers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bench.freshness as freshness

    highest = {freshness.COMPARED["parallelism_1"]: 4000.0, freshness.COMPARED["parallelism_2"]: 3000.0}
    searched: list[freshness.Deployment] = []

    def find_max(*_: Any, deployment: freshness.Deployment, **__: Any) -> dict[str, Any]:
        searched.append(deployment)
        return {"max_sustained_eps": highest.get(deployment, 6000.0)}

    monkeypatch.setattr(freshness, "find_max", find_max)
    report = freshness.compare_max(30, 0, lambda _line: None, start_rate=2000)
    assert searched == list(freshness.COMPARED.values())
    assert report["max_sustained_eps"] == {"parallelism_1": 4000.0, "parallelism_2": 3000.0, "split_operators": 6000.0}
    assert report["max_sustained_ratio"] == {"parallelism_2": 0.75, "split_operators": 1.5}


def test_split_operators_without_a_pair_of_task_managers_is_refused_before_anything_starts() -> None:
    from typer.testing import CliRunner

    from cli.main import app

    for extra in ([], ["--task-managers", "1"], ["--task-managers", "3"]):
        result = CliRunner().invoke(app, ["bench", "freshness", "--split-operators", *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert "needs an even --task-managers" in " ".join(result.output.split())
