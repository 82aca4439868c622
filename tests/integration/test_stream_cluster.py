"""The stream job on a local standalone Flink cluster: two TaskManager processes, parallelism 2, real broker and Redis.

The features in Redis must equal the pure replay exactly, as on the mini-cluster,
and both TaskManagers (each its own JVM and Python interpreter) must have
processed events: the point of the cluster is that the work is split.
When a TaskManager dies, `freshrank stream` stops the rest and exits non-zero.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from simulator.catalog import write_catalog
from stack.processes import Component, pid_alive
from streaming.flink_rest import job_status, registered_task_managers
from tests.integration.streamjob import (
    StreamJob,
    encoded,
    expected_features,
    mismatches,
    produce_raw,
    wait_exact,
    wait_for_checkpointed_progress,
    wait_until,
    with_resends_and_disorder,
    world_events,
)

LATENESS_MS = 300_000


def cluster_pids(cluster_dir: Path, service: str) -> list[int]:
    """Pids the start scripts recorded for `service` (taskexecutor, standalonesession): the JVMs, which they exec."""
    return [int(line) for path in cluster_dir.glob(f"*-{service}.pid") for line in path.read_text().split()]


@pytest.fixture
def cluster_jobs(
    tmp_path: Path, bootstrap: str, redis_server: Component, feast_registry: Path, fresh_topic: str, dlq_topic: str
) -> Iterator[Callable[..., StreamJob]]:
    """`freshrank stream --task-managers 2` jobs sharing checkpoints and cluster dir: one resumes another.
    Keyword arguments set more FRESHRANK_STREAM_* variables (`split_operators="true"`)."""
    jobs: list[StreamJob] = []

    def make(**more: str) -> StreamJob:
        job = StreamJob.configured(
            tmp_path,
            bootstrap=bootstrap,
            topic=fresh_topic,
            dlq_topic=dlq_topic,
            redis_address=redis_server.address,
            feast_registry=feast_registry,
            catalog=tmp_path / "catalog.parquet",
            lateness_ms=str(LATENESS_MS),
            checkpoint_interval_ms="1000",
            task_managers="2",
            cluster_dir=str(tmp_path / "cluster"),
            **more,
        )
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        job.kill(signal.SIGTERM)
    for pid in cluster_pids(tmp_path / "cluster", "*"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class ExactRun(NamedTuple):
    job: StreamJob
    admitted: int  # events the replay admits
    duplicates: int  # records the replay drops as resends


def run_until_exact(
    make_job: Callable[..., StreamJob],
    bootstrap: str,
    redis_address: str,
    feast_registry: Path,
    topic: str,
    tmp_path: Path,
    seed: int,
    **more: str,
) -> ExactRun:
    """A world's events with resends and disorder on `topic`, a 2-TaskManager job started on them, and Redis
    waited on until it equals the pure replay."""
    events, categories, world = world_events(3000, seed=seed)
    write_catalog(world.catalog(), tmp_path / "catalog.parquet")
    log = with_resends_and_disorder(events, seed=seed)
    produce_raw(bootstrap, topic, list(encoded(log)))
    job = make_job(**more)
    job.start(timeout_s=480)
    assert registered_task_managers(job.dashboard) == 2
    by_user, by_item = expected_features(log, categories, LATENESS_MS)
    problems = wait_exact(lambda: mismatches(redis_address, feast_registry, by_user, by_item, categories), 300)
    assert problems == [], problems[:20]
    return ExactRun(job, sum(len(group) for group in by_user.values()), len(log) - len(events))


def test_two_task_managers_split_the_partitions_and_the_features_equal_the_replay(
    cluster_jobs: Callable[..., StreamJob],
    bootstrap: str,
    redis_server: Component,
    feast_registry: Path,
    fresh_topic: str,
    tmp_path: Path,
) -> None:
    cluster_job, admitted, duplicates = run_until_exact(
        cluster_jobs, bootstrap, redis_server.address, feast_registry, fresh_topic, tmp_path, seed=11
    )
    first, second = cluster_job.metrics_addresses
    per_task_manager = [
        cluster_job.metric('freshrank_stream_events_total{outcome="admitted"}', address) for address in (first, second)
    ]
    # Each TaskManager read some of the 8 partitions (its own interpreter counts only its own events).
    assert all(count > 0 for count in per_task_manager), per_task_manager
    assert sum(per_task_manager) == admitted
    assert cluster_job.metric('freshrank_stream_events_total{outcome="duplicate"}') == duplicates
    # Both TaskManagers wrote rows of the item operator too (16 buckets over 2 subtasks).
    assert all(cluster_job.metric("freshrank_stream_rows_written_total", address) > 0 for address in (first, second))
    assert job_status(cluster_job.dashboard).state == "RUNNING"

    # A TaskManager dies: `freshrank stream` says which, stops the JobManager and the other one, and exits 1.
    taskmanagers = cluster_pids(tmp_path / "cluster", "taskexecutor")
    jobmanager = cluster_pids(tmp_path / "cluster", "standalonesession")
    assert len(taskmanagers) == 2 and len(jobmanager) == 1
    os.kill(taskmanagers[1], signal.SIGKILL)
    assert cluster_job.process is not None
    cluster_job.process.wait(120)
    assert cluster_job.process.returncode == 1
    output = " ".join(cluster_job.log_path.read_text().split())  # the CLI wraps long lines
    assert "taskmanager-" in output and "exited with code" in output, output[-2000:]
    wait_until(lambda: not any(pid_alive(pid) for pid in [*taskmanagers, *jobmanager]), 60, "the cluster to stop")


def test_a_killed_cluster_job_resumes_from_its_checkpoint_losing_nothing_and_counting_nothing_twice(
    cluster_jobs: Callable[..., StreamJob],
    bootstrap: str,
    redis_server: Component,
    feast_registry: Path,
    fresh_topic: str,
    tmp_path: Path,
) -> None:
    events, categories, world = world_events(3000, seed=12)
    write_catalog(world.catalog(), tmp_path / "catalog.parquet")
    log = with_resends_and_disorder(events, seed=12)
    produce_raw(bootstrap, fresh_topic, list(encoded(log[: len(log) // 2])))

    first = cluster_jobs()
    first.start(timeout_s=480)
    wait_for_checkpointed_progress(first, tmp_path / "checkpoints", len(log) // 8, timeout_s=240)
    produce_raw(bootstrap, fresh_topic, list(encoded(log[len(log) // 2 :])))
    old = cluster_pids(tmp_path / "cluster", "*")
    first.kill(signal.SIGKILL)  # `freshrank stream`; its JobManager and TaskManagers get the parent-death signal
    wait_until(lambda: not any(pid_alive(pid) for pid in old), 60, "the killed job's cluster to go")

    second = cluster_jobs()
    second.start(timeout_s=480)
    by_user, by_item = expected_features(log, categories, LATENESS_MS)
    problems = wait_exact(
        lambda: mismatches(redis_server.address, feast_registry, by_user, by_item, categories), timeout_s=300
    )
    assert problems == [], problems[:20]
    assert "resuming from" in " ".join((tmp_path / "stream.log").read_text().split())


def test_split_operators_read_on_one_task_manager_and_compute_items_on_the_other_and_equal_the_replay(
    cluster_jobs: Callable[..., StreamJob],
    bootstrap: str,
    redis_server: Component,
    feast_registry: Path,
    fresh_topic: str,
    tmp_path: Path,
) -> None:
    job, admitted, _ = run_until_exact(
        cluster_jobs,
        bootstrap,
        redis_server.address,
        feast_registry,
        fresh_topic,
        tmp_path,
        seed=13,
        split_operators="true",
    )

    # Parallelism 1, the two operators in two JVMs: one TaskManager read every event and wrote every user row,
    # the other wrote every item row (each interpreter counts only what it did itself).
    def on(address: str) -> tuple[float, float, float]:
        return (
            job.metric('freshrank_stream_events_total{outcome="admitted"}', address),
            job.metric('freshrank_stream_rows_written_total{view="user_stream_features"}', address),
            job.metric('freshrank_stream_rows_written_total{view="item_stream_features"}', address),
        )

    readers, items = sorted((on(address) for address in job.metrics_addresses), key=lambda counts: -counts[0])
    assert readers[0] == admitted and readers[1] > 0 and readers[2] == 0, readers
    assert items[0] == 0 and items[1] == 0 and items[2] > 0, items
    assert job_status(job.dashboard).state == "RUNNING"
