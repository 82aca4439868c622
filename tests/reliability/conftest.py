# ruff: noqa: F811 - the imported fixtures are parameters of the fixtures below
"""Fault suites reuse the integration fixtures: a real broker, Redis and Feast registry per session."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from stack.processes import Component
from tests.integration.conftest import (  # noqa: F401 - fixtures
    bootstrap,
    broker,
    dlq_topic,
    feast_registry,
    fresh_topic,
    redis_server,
    stack_settings,
)
from tests.integration.streamjob import StreamJob

LATENESS_MS = 300_000


def create_topic(bootstrap: str, partitions: int, name: str | None = None) -> str:
    name = name or f"test-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # held: a collected client cancels its futures
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
    return name


def delete_topic(bootstrap: str, name: str) -> None:
    """Delete `name` and wait until the broker no longer lists it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([name])[name].result(30)
    deadline = time.monotonic() + 30
    while name in admin.list_topics(timeout=5).topics:
        assert time.monotonic() < deadline, f"topic {name} still listed after deletion"
        time.sleep(0.2)


@pytest.fixture
def start_job(
    tmp_path: Path, bootstrap: str, redis_server: Component, feast_registry: Path, dlq_topic: str
) -> Iterator[Callable[..., StreamJob]]:
    """Starts `freshrank stream` on a topic; jobs of one test share checkpoints (a new one restores)."""
    jobs: list[StreamJob] = []

    def start(topic: str, **settings: str) -> StreamJob:
        job = StreamJob.configured(
            tmp_path,
            bootstrap=bootstrap,
            topic=topic,
            dlq_topic=settings.pop("dlq_topic", dlq_topic),
            redis_address=redis_server.address,
            feast_registry=feast_registry,
            catalog=tmp_path / "catalog.parquet",
            lateness_ms=str(LATENESS_MS),
            checkpoint_interval_ms="1000",
            **settings,
        )
        jobs.append(job)
        job.start()
        return job

    yield start
    for job in jobs:
        job.kill()
