"""A Flink failover shows as a task restart, so a job in a restart loop is not reported healthy."""

from __future__ import annotations

from prometheus_client import REGISTRY

from cli.stack import stream_problems
from streaming import metrics


def test_a_reopened_subtask_or_a_later_attempt_counts_as_a_restart() -> None:
    before = metrics.TASK_RESTARTS._value.get()
    metrics.task_opened("TestOperator", 0, 0)
    assert metrics.TASK_RESTARTS._value.get() == before
    metrics.task_opened("TestOperator", 0, 0)  # thread mode: the same interpreter opens it again
    metrics.task_opened("OtherOperator", 3, 2)  # attempt 2 of a subtask never seen here
    assert metrics.TASK_RESTARTS._value.get() == before + 2
    assert (REGISTRY.get_sample_value("freshrank_stream_task_restarts_recent") or 0) >= 2


def detail(**overrides: float) -> dict[str, float]:
    return {"task_restarts_recent": 0.0, "reading_paused": 0.0, **overrides}


def test_status_calls_a_restarting_or_paused_job_unhealthy() -> None:
    assert stream_problems(detail()) == []
    assert "restarts" in stream_problems(detail(task_restarts_recent=3))[0]
    assert "paused" in stream_problems(detail(reading_paused=1))[0]
    assert stream_problems(None) == ["metrics unreachable"]
