"""POST /v1/events answers after Kafka acknowledged, survives producer failures and shuts down in bounded time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

import sdk.publisher
from serving.app import create_app
from serving.events import KafkaEventSink
from serving.metrics import ServingMetrics
from serving.online_store import InMemoryOnlineStore
from serving.settings import KafkaEvents, MemoryOnlineStore, ServingSettings
from serving.testing import AppClient
from stack.ports import free_port
from tests.factories import NOW_MS, make_event
from tests.unit.serving.test_app import KEY, event


class FakeProducer:
    """confluent_kafka.Producer's surface the SDK uses; `fail` makes the next produce() raise it."""

    instances: list[FakeProducer] = []
    fail: KafkaException | None = None

    def __init__(self, config: dict[str, Any], logger: Any = None) -> None:
        self.queued: list[Callable[[KafkaError | None, Any], None]] = []
        FakeProducer.instances.append(self)

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Callable[..., None]) -> None:
        failure, FakeProducer.fail = FakeProducer.fail, None
        if failure is not None:
            raise failure
        self.queued.append(on_delivery)

    def poll(self, timeout: float = 0.0) -> int:
        served, self.queued = self.queued, []
        for report in served:
            report(None, None)
        return len(served)

    def flush(self, timeout: float = 0.0) -> int:
        self.poll()
        return 0

    def __len__(self) -> int:
        return len(self.queued)


@pytest.fixture
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeProducer]]:
    FakeProducer.instances = []
    FakeProducer.fail = None
    monkeypatch.setattr(sdk.publisher, "Producer", FakeProducer)
    yield FakeProducer


def app_with(sink: KafkaEventSink, registry_dir: Path, catalog_path: Path, metrics: ServingMetrics) -> AppClient:
    settings = ServingSettings(
        environment="dev", online_store=MemoryOnlineStore(), model_registry=registry_dir, catalog_path=catalog_path
    )
    app = create_app(settings, store=InMemoryOnlineStore(), events=sink, clock_ms=lambda: NOW_MS)
    return AppClient(app)


def test_a_fatal_producer_error_fails_one_batch_and_the_next_request_works(
    fake_producer: type[FakeProducer], registry_dir: Path, catalog_path: Path
) -> None:
    metrics = ServingMetrics()
    sink = KafkaEventSink(KafkaEvents(), metrics)
    with app_with(sink, registry_dir, catalog_path, metrics) as client:
        fake_producer.fail = KafkaException(KafkaError(KafkaError._FATAL, "idempotence: sequence desync", fatal=True))
        failed = client.post("/v1/events", json={"events": [event(event_id="a")]}, headers=KEY)
        assert failed.status_code == 503, failed.text
        assert failed.json()["rejected"][0]["event_id"] == "a" and "retry-after" in failed.headers
        assert len(fake_producer.instances) == 2, "the producer was replaced"
        for n in range(3):
            ok = client.post("/v1/events", json={"events": [event(event_id=f"b{n}")]}, headers=KEY)
            assert ok.status_code == 202 and ok.json()["accepted"] == 1, ok.text
        fake_producer.fail = KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large"))
        batch = [event(event_id="big"), event(event_id="fine")]
        mixed = client.post("/v1/events", json={"events": batch}, headers=KEY).json()
        assert mixed["accepted"] == 1 and mixed["rejected"][0]["event_id"] == "big"
        assert "size limit" in mixed["rejected"][0]["reason"]


def test_events_are_acknowledged_only_once_kafka_has_them(registry_dir: Path, catalog_path: Path) -> None:
    # A real producer towards a port where no broker listens: nothing can be acknowledged.
    metrics = ServingMetrics()
    sink = KafkaEventSink(KafkaEvents(bootstrap_servers=f"127.0.0.1:{free_port()}", ack_timeout_s=0.5), metrics)
    with app_with(sink, registry_dir, catalog_path, metrics) as client:
        started = time.monotonic()
        response = client.post("/v1/events", json={"events": [event(event_id="x"), event(event_id="y")]}, headers=KEY)
        assert response.status_code == 503, response.text
        assert [r["event_id"] for r in response.json()["rejected"]] == ["x", "y"]
        assert all("resend" in r["reason"] for r in response.json()["rejected"])
        assert time.monotonic() - started < 5.0


def test_shutdown_flushes_for_a_bounded_time_and_answers_waiting_requests() -> None:
    metrics = ServingMetrics()
    sink = KafkaEventSink(KafkaEvents(bootstrap_servers=f"127.0.0.1:{free_port()}", ack_timeout_s=30), metrics)
    series = ("freshrank_serve_events_total", {"outcome": "undelivered_at_shutdown"})
    before = metrics.registry.get_sample_value(*series) or 0.0

    async def scenario() -> tuple[list[str | None], int, float]:
        waiting = asyncio.create_task(sink.publish([make_event(event_id=f"e{n}") for n in range(3)]))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        left = await asyncio.to_thread(sink.close, 0.3)
        published = await asyncio.wait_for(waiting, 2.0)
        return published.outcomes, left, time.monotonic() - started

    outcomes, left, took = asyncio.run(scenario())
    assert left == 3 and took < 2.0
    assert all(o is not None and "shutting down" in o for o in outcomes), outcomes
    assert metrics.registry.get_sample_value(*series) == before + 3
