"""Bad stored data and hostile ids: no request answers 500, no background task dies, nothing grows unbounded."""

from __future__ import annotations

import asyncio
import random
import tracemalloc
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from feature_repo.definitions import USER_VIEW
from feature_repo.layout import FeatureRow
from features.candidates import user_key
from serving import app as app_module
from serving import items as items_module
from serving.app import create_app
from serving.events import MemoryEventSink
from serving.items import ABSENT_MAX, PENDING_MAX, Catalog, ItemFeatureCache
from serving.metrics import ServingMetrics
from serving.online_store import InMemoryOnlineStore
from serving.settings import MemoryEvents, MemoryOnlineStore, ServingSettings
from serving.testing import AppClient
from tests.unit.serving.conftest import ITEMS


def metric(client: AppClient, series: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_corrupt_user_row_degrades_the_answer(client: AppClient, store: InMemoryOnlineStore) -> None:
    # Counters are shared by every app of the test process once Feast has been imported
    # (prometheus_client's multiprocess mode), so other tests' reads can add to it: it must grow.
    before = metric(client, 'freshrank_serve_corrupt_rows_total{entity="user"}')
    store.corrupt.add("u-1")
    response = client.get("/v1/feed/u-1?k=5")
    assert response.status_code == 200, response.text
    body = response.json()
    assert "user_features:corrupt" in body["degraded"] and body["items"]
    assert metric(client, 'freshrank_serve_corrupt_rows_total{entity="user"}') > before
    # The store answered: the breaker stays closed, the next user is served from Redis.
    assert set(client.get("/v1/feed/u-2?k=5").json()["degraded"]) == {
        "user_features:absent",
        "candidates:popular_global",
    }


def test_a_corrupt_cached_list_degrades_only_the_candidates(client: AppClient, store: InMemoryOnlineStore) -> None:
    # The list and the user row come back from one round trip: a bad list must not spoil the good row.
    store.corrupt.add(user_key("u-1"))
    response = client.get("/v1/feed/u-1?k=5")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["degraded"] == ["candidates:corrupt", "candidates:popular_global"]
    assert body["candidate_source"] == "popular_global" and body["items"]
    # The store answered: the breaker stays closed and the next answer reads Redis again.
    store.corrupt.clear()
    assert client.get("/v1/feed/u-1?k=5").json()["degraded"] == []


def test_a_user_row_of_the_wrong_shape_ranks_as_a_user_without_features(
    client: AppClient, store: InMemoryOnlineStore
) -> None:
    # Decodable, but the affinity lists disagree in length and hold the wrong types.
    store.users["odd"] = FeatureRow(
        USER_VIEW,
        "odd",
        {"user_affinity_categories": ["news", 3], "user_affinity_scores": "x", "user_last_item_ids": [1, None]},
        1,
    )
    response = client.post("/v1/rank", json={"user_id": "odd", "candidates": ITEMS[:5]})
    assert response.status_code == 200, response.text


def test_an_unexpected_error_in_a_read_degrades_instead_of_500(
    client: AppClient, store: InMemoryOnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(user_id: str) -> FeatureRow | None:
        raise KeyError("a bug in a decoder")

    monkeypatch.setattr(store, "user_row", broken)
    response = client.get("/v1/feed/u-1?k=5")
    assert response.status_code == 200 and "user_features:error" in response.json()["degraded"]


def test_unhandled_errors_answer_json_not_plain_text(client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(client.services.ranker, "rank", boom)
    with AppClient(client.app, raise_app_exceptions=False) as fresh:
        monkeypatch.setattr(fresh.services.ranker, "rank", boom)
        response = fresh.get("/v1/feed/u-1")
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "message": "the server failed on this request; retry"}


def test_corrupt_item_rows_are_skipped_and_the_refresh_goes_on(client: AppClient, store: InMemoryOnlineStore) -> None:
    store.corrupt.add("item-3")
    assert client.run(client.services.items.refresh())
    snapshot = client.services.items.snapshot
    assert "item-3" not in snapshot.index and "item-4" in snapshot.index
    assert metric(client, 'freshrank_serve_corrupt_rows_total{entity="item"}') >= 1
    assert client.get("/readyz").json()["ready"]


class FailingOnce(InMemoryOnlineStore):
    """Item reads raise a non-store error (what a protobuf DecodeError used to be) until `healed`."""

    healed: bool = False

    async def item_rows(self, item_ids: Sequence[str]) -> dict[str, FeatureRow]:
        if not self.healed:
            raise ValueError("Error parsing message with type 'feast.types.Value'")
        return await super().item_rows(item_ids)


def test_the_item_refresh_task_survives_any_error_and_readyz_reports_a_stopped_task(
    store: InMemoryOnlineStore, registry_dir: Path, catalog_path: Path
) -> None:
    failing = FailingOnce(items=dict(store.items), lists=dict(store.lists), users=dict(store.users))
    settings = ServingSettings(
        environment="dev",
        online_store=MemoryOnlineStore(),
        events=MemoryEvents(),
        model_registry=registry_dir,
        catalog_path=catalog_path,
        item_refresh_s=0.05,
    )
    with AppClient(create_app(settings, store=failing, events=MemoryEventSink())) as client:
        task = next(t for t in client.services.background if t.get_name() == "item features")
        client.wait(0.3)
        assert not task.done(), "the refresh task ended on a bad value"
        assert metric(client, 'freshrank_serve_item_cache_refreshes_total{outcome="error"}') >= 1
        assert client.get("/readyz").status_code == 200
        failing.healed = True
        for _ in range(100):
            if client.services.items.snapshot.index:
                break
            client.wait(0.05)
        assert "item-4" in client.services.items.snapshot.index
        # A task that did end (here: cancelled from outside) makes the pod unready, naming it.
        task.cancel()
        client.wait(0.01)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["stopped_tasks"] == ["item features"]


def test_a_flood_of_random_ids_with_the_store_down_is_bounded_in_memory_and_reads(catalog_path: Path) -> None:
    store = InMemoryOnlineStore()
    catalog = Catalog(catalog_path)
    catalog.reload_if_changed()
    cache = ItemFeatureCache(store, catalog, ServingMetrics(), 30.0, 200_000)
    rng = random.Random(0)

    def flood(requests: int) -> None:
        for _ in range(requests):
            cache.lookup([f"rand-{rng.getrandbits(64):x}" for _ in range(500)])

    async def drive(steps: int) -> None:
        for _ in range(steps):
            cache._retry_at = 0.0  # skip the back-off: as many reads as the loop could ever make
            await cache.read_pending()

    store.down = True
    flood(50)  # warm the structures to their bound
    asyncio.run(drive(5))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    flood(1_000)  # 500k random ids
    asyncio.run(drive(50))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(cache._pending) <= PENDING_MAX
    assert grown < 2_000_000, f"{grown} bytes held after a flood of 500k ids"
    assert store.reads <= 55 * items_module.PENDING_READ_BATCH

    # The store back but holding none of them: each id is read once, remembered as absent (bounded),
    # and none of them joins the set every full refresh re-reads.
    store.down = False
    store.reads = 0
    asyncio.run(drive(20))
    flood(400)
    asyncio.run(drive(20))
    assert store.reads <= 40 * items_module.PENDING_READ_BATCH
    assert len(cache._absent) <= ABSENT_MAX and not cache._interest
    assert len(cache.wanted_ids()) == len(cache.catalog.ids())


# --- what a reviewer of a public API checks: limits, order of checks, overload ---------------------


def test_a_chunked_body_over_the_limit_is_413(make_client: Callable[..., AppClient]) -> None:
    client = make_client(max_body_bytes=1000)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"user_id": "u", "candidates": ['
        for _ in range(200):  # 1.8 kB, no Content-Length
            yield b'"item-1",'
        yield b'"item-2"]}'

    response = client.post("/v1/rank", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"
    small = client.post("/v1/rank", json={"user_id": "u", "candidates": ["item-1"]})
    assert small.status_code == 200, small.text


def test_the_api_key_is_checked_before_the_body_is_read(make_client: Callable[..., AppClient]) -> None:
    client = make_client(max_body_bytes=1000)
    junk = client.post("/v1/events", content=b"{not json", headers={"content-type": "application/json"})
    assert junk.status_code == 401, junk.text
    huge = client.post("/v1/events", content=b"x" * 5000, headers={"content-type": "application/json"})
    assert huge.status_code == 401, huge.text
    admin = client.post("/v1/admin/reload", content=b"{")
    assert admin.status_code == 401


def test_a_worker_past_max_in_flight_sheds_with_503_and_ops_endpoints_still_answer(
    make_client: Callable[..., AppClient], store: InMemoryOnlineStore
) -> None:
    client = make_client(max_in_flight=2, candidates_deadline_ms=1000, user_features_deadline_ms=1000)
    before = metric(client, 'freshrank_serve_shed_total{reason="overloaded"}')
    store.delay_s = 0.2
    answers = client.concurrently("GET", "/v1/feed/u-1?k=5", 5)
    store.delay_s = 0.0
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 200, 503, 503, 503], codes
    shed = next(r for r in answers if r.status_code == 503)
    assert shed.json()["error"] == "overloaded" and shed.headers["retry-after"] == "1"
    assert metric(client, 'freshrank_serve_shed_total{reason="overloaded"}') == before + 3
    assert client.get("/readyz").status_code == 200


def test_a_request_past_the_overall_deadline_is_504(
    make_client: Callable[..., AppClient], store: InMemoryOnlineStore
) -> None:
    client = make_client(request_timeout_s=0.1, candidates_deadline_ms=5000, user_features_deadline_ms=5000)
    store.delay_s = 0.5
    response = client.get("/v1/feed/u-1?k=5")
    store.delay_s = 0.0
    assert response.status_code == 504 and response.json()["error"] == "request_timeout"


def test_the_item_refresh_loop_ends_on_a_cancel_that_arrives_with_a_wake_up(catalog_path: Path) -> None:
    """A request's miss wakes the loop in the same turn the app's shutdown cancels it (seen in CI:
    Python 3.11's wait_for returned the wake-up and swallowed the cancel, so shutdown hung)."""
    catalog = Catalog(catalog_path)
    catalog.reload_if_changed()
    cache = ItemFeatureCache(InMemoryOnlineStore(), catalog, ServingMetrics(), 30.0, 1_000)

    async def scenario() -> bool:
        task = asyncio.create_task(cache.run())
        while cache.snapshot.refreshed_ms is None or cache._wake.is_set():
            await asyncio.sleep(0)  # until the first refresh is done and the loop waits for a wake-up
        for _ in range(3):
            await asyncio.sleep(0)
        cache._wake.set()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2.0)
        return task in done

    assert asyncio.run(scenario()), "the refresh loop outlived its cancel"


def test_shutdown_goes_on_without_a_task_that_ignores_its_cancel(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app_module, "SHUTDOWN_TASKS_S", 0.2)
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # swallows the cancel, as a misbehaving library might

    async def scenario() -> float:
        task = asyncio.create_task(stubborn(), name="stubborn")
        await asyncio.sleep(0)
        started = asyncio.get_running_loop().time()
        await app_module._stop([task])
        took = asyncio.get_running_loop().time() - started
        release.set()
        await task
        return took

    assert asyncio.run(scenario()) < 2.0
    assert "'stubborn' did not stop" in caplog.text
