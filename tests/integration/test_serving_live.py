"""The whole loop: events through POST /v1/events -> Kafka -> the stream job -> Feast/Redis -> the user's ranking."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdk.clock import wall_clock_ms
from serving.app import create_app
from serving.settings import KafkaEvents, RedisOnlineStore, ServingSettings
from serving.testing import AppClient, write_linear_model
from simulator.catalog import CatalogItem, write_catalog
from stack.processes import Component
from tests.integration.streamjob import StreamJob

KEY = {"X-API-Key": "dev-key"}
A_ITEMS = [f"live-a-{n}" for n in range(10)]
B_ITEMS = [f"live-b-{n}" for n in range(10)]
CANDIDATES = A_ITEMS[5:] + B_ITEMS[5:]  # never interacted with: only the user's affinity separates them


@pytest.fixture
def stream_job(
    tmp_path: Path, bootstrap: str, redis_server: Component, feast_registry: Path, fresh_topic: str, dlq_topic: str
) -> Iterator[StreamJob]:
    old = wall_clock_ms() - 30 * 86_400_000
    catalog = [CatalogItem(i, "cat-a", "c", 0.0, old, 30_000) for i in A_ITEMS]
    catalog += [CatalogItem(i, "cat-b", "c", 0.0, old, 30_000) for i in B_ITEMS]
    write_catalog(catalog, tmp_path / "catalog.parquet")
    job = StreamJob.configured(
        tmp_path,
        bootstrap=bootstrap,
        topic=fresh_topic,
        dlq_topic=dlq_topic,
        redis_address=redis_server.address,
        feast_registry=feast_registry,
        catalog=tmp_path / "catalog.parquet",
    )
    job.start()
    yield job
    job.kill()


def events_for(user: str, items: list[str], kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    now = wall_clock_ms()
    return [
        {
            "event_id": uuid.uuid4().hex,
            "user_id": user,
            "item_id": item,
            "event_type": kind,
            "event_time": now,
            "watch_ms": 30_000 if kind == "complete" else None,
        }
        for item in items
        for kind in kinds
    ]


def ranked_categories(client: AppClient, user: str) -> tuple[list[str], list[str]]:
    body = client.post("/v1/rank", json={"user_id": user, "candidates": CANDIDATES, "k": len(CANDIDATES)}).json()
    return [i["item_id"].split("-")[1] for i in body["items"]], body["degraded"]


def wait_for_order(client: AppClient, user: str, first: str, timeout_s: float) -> list[str]:
    """Poll the ranking until every item of category `first` ranks above every other one."""
    deadline = time.monotonic() + timeout_s
    while True:
        order, degraded = ranked_categories(client, user)
        half = len(order) // 2
        if set(order[:half]) == {first} and not degraded:
            return order
        assert time.monotonic() < deadline, f"ranking did not react: {order} {degraded}"
        client.wait(1.0)


def test_new_events_through_the_stream_job_change_the_users_ranking(
    stream_job: StreamJob, bootstrap: str, redis_server: Component, fresh_topic: str, tmp_path: Path
) -> None:
    write_linear_model(tmp_path / "models", 1)  # weighs the user's category affinity for the item
    settings = ServingSettings(
        environment="dev",
        online_store=RedisOnlineStore(address=redis_server.address),
        events=KafkaEvents(bootstrap_servers=bootstrap, topic=fresh_topic),
        model_registry=tmp_path / "models",
        catalog_path=tmp_path / "catalog.parquet",
        exploration_share=0.0,
        max_run_per_category=100,
        user_features_deadline_ms=200,
        candidates_deadline_ms=200,
    )
    user = f"live-user-{uuid.uuid4().hex[:8]}"
    with AppClient(create_app(settings)) as client:
        order, degraded = ranked_categories(client, user)
        assert "user_features:absent" in degraded  # nobody knows this user yet

        accepted = client.post("/v1/events", json={"events": events_for(user, A_ITEMS[:3], ("click",))}, headers=KEY)
        assert accepted.status_code == 202 and accepted.json()["accepted"] == 3
        wait_for_order(client, user, "a", timeout_s=120)

        # The user turns to category b: more and stronger engagement there.
        batch = events_for(user, B_ITEMS[:5], ("click", "complete", "like"))
        assert client.post("/v1/events", json={"events": batch}, headers=KEY).json()["accepted"] == len(batch)
        wait_for_order(client, user, "b", timeout_s=120)
