"""A Flink failover shows as a task restart, so a job in a restart loop is not reported healthy."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
from prometheus_client import REGISTRY

from stack.health import stream_problems
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


def test_metrics_stay_in_process_memory_even_after_feast_asked_for_files() -> None:
    # A fresh interpreter, imports in the job's order: Feast first (it sets PROMETHEUS_MULTIPROCESS_DIR).
    probe = (
        "import feast.infra.online_stores.redis\n"
        "from streaming import metrics\n"
        "print(type(metrics.EVENTS.labels('admitted')._value).__name__)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "MutexValue"


def test_the_freshness_gauges_count_the_rows_of_every_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    from feature_repo.layout import FeatureRow
    from sdk.clock import wall_clock_ms
    from streaming import operators
    from streaming.settings import StreamSettings

    class Sink:
        def __init__(self, address: str, declared: object = ()) -> None:
            pass

        def open(self) -> None:
            pass

        def write(self, rows: object) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setattr(operators, "OnlineStoreSink", Sink)
    users, items = operators.RowWriter(StreamSettings()), operators.RowWriter(StreamSettings())
    tracker = metrics.recent_freshness(60.0)
    before = REGISTRY.get_sample_value("freshrank_stream_freshness_recent_samples") or 0.0
    now = wall_clock_ms()
    users.write([FeatureRow("user_stream_features", f"u{n}", {}, now, n, now) for n in range(3)])
    items.write([FeatureRow("item_stream_features", f"i{n}", {}, now, n, now) for n in range(2)])
    tracker._published = -float("inf")
    tracker.publish()
    assert REGISTRY.get_sample_value("freshrank_stream_freshness_recent_samples") == before + 5


def test_the_recent_freshness_quantiles_are_exact_over_the_horizon() -> None:
    """Brute force: every sample of the last horizon (to a tenth of a second), sorted, read at n * q."""
    rng = random.Random(7)
    tracker = metrics.RecentFreshness(horizon_s=10.0, every_s=0.0)
    samples: list[tuple[float, int]] = []
    now = 1_000.25
    for step in range(400):
        now += rng.choice([0.0, 0.01, 0.3, 1.0])
        batch = [
            rng.choice([rng.randrange(0, 3_000), rng.randrange(0, 60_000), 0]) for _ in range(rng.randrange(0, 30))
        ]
        tracker.observe_ms(batch, now)  # one write's rows
        samples += [(now, freshness_ms) for freshness_ms in batch]
        if step % 7:
            continue
        tracker.publish(now)
        kept = sorted(value for at, value in samples if int(at * 10) + 1 > (now - 10.0) * 10)
        assert REGISTRY.get_sample_value("freshrank_stream_freshness_recent_samples") == len(kept)
        for label, q in (("0.5", 0.5), ("0.99", 0.99), ("1", 1.0)):
            expected = kept[min(len(kept) - 1, int(q * len(kept)))] / 1000 if kept else 0.0
            got = REGISTRY.get_sample_value("freshrank_stream_freshness_recent_seconds", {"quantile": label})
            assert got == expected, (label, step)
