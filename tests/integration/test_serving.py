"""The feed API against a real Redis, the Feast online store and a real ONNX ranker.

Features are written the way the stream job writes them (Feast's provider API) and
read back independently through Feast's SDK to check the API's ranking; Redis is
stopped and frozen under it; models are corrupted under it; requests are fuzzed.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.serving import SeededWorld, api_component, http_json, seed_world, train_model
from feature_repo.definitions import ITEM_VIEW, JOIN_KEYS, USER_VIEW
from feature_repo.layout import redis_host_port, view_layouts
from feature_repo.store import open_store
from features.candidates import encode_candidates, popular_global_key, user_key
from features.definitions import ITEM_FEATURE_NAMES, USER_FEATURE_NAMES
from features.ranking import ItemMeta, feature_matrix
from sdk.clock import wall_clock_ms
from serving.app import create_app
from serving.items import PENDING_MAX
from serving.settings import KafkaEvents, MemoryEvents, RedisOnlineStore, ServingSettings
from serving.testing import AppClient
from stack.ports import free_port
from stack.processes import Component, running, start_process, stop_process, wait_healthy

ADMIN = {"Authorization": "Bearer dev-admin-key"}
INGEST = {"Authorization": "Bearer dev-key"}
LAYOUTS = view_layouts()


@pytest.fixture(scope="module")
def world(redis_server: Component, feast_registry: Path, tmp_path_factory: pytest.TempPathFactory) -> SeededWorld:
    state = tmp_path_factory.mktemp("serving-world")
    seeded = seed_world(redis_server.address, state, users=300, items=400, seconds=30, seed=5)
    import redis

    client = redis.Redis(*redis_host_port(redis_server.address))
    client.set(user_key(seeded.users[0]), encode_candidates(seeded.items[:120]))
    client.set(popular_global_key(), encode_candidates(seeded.items[:60]))
    client.close()
    return seeded


@pytest.fixture(scope="module")
def model_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    registry = tmp_path_factory.mktemp("models")
    # The project's trainer on a small world: half an hour of events is enough for a real model.
    train_model(registry, users=300, items=150, seconds=1800)
    return registry


def settings_for(redis_address: str, registry: Path, world: SeededWorld, **overrides: Any) -> ServingSettings:
    values: dict[str, Any] = {
        "environment": "dev",
        "online_store": RedisOnlineStore(address=redis_address),
        "events": MemoryEvents(),
        "model_registry": registry,
        "catalog_path": world.catalog_path,
        "candidates_deadline_ms": 200,
        "user_features_deadline_ms": 200,
        **overrides,
    }
    return ServingSettings(**values)


@pytest.fixture
def api(redis_server: Component, model_registry: Path, world: SeededWorld) -> Iterator[AppClient]:
    with AppClient(create_app(settings_for(redis_server.address, model_registry, world))) as client:
        yield client


@pytest.mark.parametrize("user_reads", ["hmget", "feast_sdk"])
def test_ranked_order_equals_scores_computed_independently_from_feast(
    redis_server: Component, feast_registry: Path, model_registry: Path, world: SeededWorld, user_reads: str
) -> None:
    now = wall_clock_ms()
    settings = settings_for(
        redis_server.address,
        model_registry,
        world,
        online_store=RedisOnlineStore(
            address=redis_server.address, user_reads=user_reads, feast_registry=feast_registry
        ),
        exploration_share=0.0,
        max_run_per_category=10_000,
        filter_seen=False,
    )
    store = open_store(redis_server.address, feast_registry)
    session = ort.InferenceSession(str(model_registry / "ranker" / "1" / "model.onnx"))
    metas = {i.item_id: ItemMeta(i.item_id, i.category, i.created_ms, i.duration_ms) for i in world.catalog}
    rng = np.random.default_rng(3)
    with AppClient(create_app(settings, clock_ms=lambda: now)) as client:
        for user in world.users[:5]:
            candidates = [str(c) for c in rng.choice(world.items, size=80, replace=False)]
            response = client.post("/v1/rank", json={"user_id": user, "candidates": candidates, "k": 80})
            assert response.status_code == 200
            body = response.json()
            assert body["degraded"] == [] and body["model"]["version"] == 1

            user_row = store.get_online_features(
                features=[f"{USER_VIEW}:{n}" for n in USER_FEATURE_NAMES], entity_rows=[{JOIN_KEYS[USER_VIEW]: user}]
            ).to_dict()
            item_rows = store.get_online_features(
                features=[f"{ITEM_VIEW}:{n}" for n in ITEM_FEATURE_NAMES],
                entity_rows=[{JOIN_KEYS[ITEM_VIEW]: c} for c in candidates],
            ).to_dict()
            matrix = feature_matrix(
                {n: user_row[n][0] for n in USER_FEATURE_NAMES},
                [{n: item_rows[n][k] for n in ITEM_FEATURE_NAMES} for k in range(len(candidates))],
                [metas.get(c) for c in candidates],
                now,
            )
            expected = dict(zip(candidates, session.run(["probabilities"], {"features": matrix})[0][:, 1], strict=True))

            served = [(i["item_id"], i["score"]) for i in body["items"]]
            assert sorted(item for item, _ in served) == sorted(candidates)
            # Same score per item (float32 sums may differ in the last bit between sessions) and
            # the served order is the order of the independently computed scores.
            np.testing.assert_allclose([score for _, score in served], [expected[i] for i, _ in served], atol=1e-6)
            along = np.array([expected[item] for item, _ in served])
            assert np.all(np.diff(along) <= 1e-6), "served order is not by descending score"
            assert along[0] == max(expected.values())


def test_feed_serves_the_cached_list_with_policies(api: AppClient, world: SeededWorld) -> None:
    body = api.get(f"/v1/feed/{world.users[0]}?k=20").json()
    assert body["candidate_source"] == "user" and body["degraded"] == []
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 20 and set(ids) <= set(world.items[:120])
    categories = {i.item_id: i.category for i in world.catalog}
    runs = [categories[a] == categories[b] == categories[c] for a, b, c in zip(ids, ids[1:], ids[2:], strict=False)]
    assert not any(runs), "no three consecutive items of one category"
    assert sum(i["explored"] for i in body["items"]) <= 2


def test_redis_stopped_or_frozen_every_answer_is_200_and_degraded(
    redis_server: Component, model_registry: Path, world: SeededWorld, tmp_path: Path
) -> None:
    settings = settings_for(
        redis_server.address, model_registry, world, candidates_deadline_ms=20, user_features_deadline_ms=20
    )
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"/v1/feed/{world.users[0]}?k=10", None),
        ("GET", "/v1/feed/someone-new?k=10&country=US", None),
        ("POST", "/v1/rank", {"user_id": world.users[1], "candidates": world.items[:50], "k": 10}),
        ("POST", "/v1/rank", {"user_id": world.users[2], "k": 5}),
    ]
    with AppClient(create_app(settings)) as client:
        for method, url, body in requests:  # warm: connections open, caches filled
            assert client.request(method, url, json=body).status_code == 200
        assert redis_server.process is not None
        try:
            # Frozen: connections hang, so only the deadlines protect the requests.
            os.kill(redis_server.process.pid, signal.SIGSTOP)
            for method, url, body in requests * 3:
                started = time.monotonic()
                response = client.request(method, url, json=body)
                assert response.status_code == 200, response.text
                answer = response.json()
                assert answer["items"], "popular lists and item features are held in process"
                assert any(r.endswith((":deadline", ":store_unavailable")) for r in answer["degraded"]), answer
                assert time.monotonic() - started < 1.0
            os.kill(redis_server.process.pid, signal.SIGCONT)

            # Stopped: connections are refused.
            stop_process(redis_server)
            for method, url, body in requests * 5:
                response = client.request(method, url, json=body)
                assert response.status_code == 200, response.text
                assert response.json()["degraded"]
            assert client.get("/readyz").json()["online_store"] is False
            # A flood of ids nobody knows, while reads fail: the read queue stays bounded.
            for n in range(40):
                flood = {"user_id": "flood", "candidates": [f"rand-{n}-{m}" for m in range(500)], "k": 5}
                assert client.post("/v1/rank", json=flood).status_code == 200
            assert len(client.services.items._pending) <= PENDING_MAX
        finally:
            if redis_server.process is not None and redis_server.process.poll() is None:
                os.kill(redis_server.process.pid, signal.SIGCONT)
            else:
                start_process(redis_server, tmp_path / "logs")
                wait_healthy(redis_server, tmp_path / "logs")

        # Back: once the breaker closes, answers are complete again.
        deadline = time.monotonic() + 15
        while client.get(f"/v1/feed/{world.users[0]}?k=10").json()["degraded"]:
            assert time.monotonic() < deadline, "answers stay degraded after Redis came back"
            client.wait(0.5)
        metrics = client.get("/metrics").text
        assert 'freshrank_serve_requests_total{route="/v1/rank",status="500"}' not in metrics


def test_corrupt_hashes_in_redis_degrade_answers_and_never_stop_the_refresh(
    redis_server: Component, model_registry: Path, world: SeededWorld
) -> None:
    import redis

    layout_item, layout_user = LAYOUTS[ITEM_VIEW], LAYOUTS[USER_VIEW]
    bad_item, bad_user = world.items[7], world.users[3]
    client = redis.Redis(*redis_host_port(redis_server.address))
    saved_item = client.hgetall(layout_item.key(bad_item))
    saved_user = client.hgetall(layout_user.key(bad_user))
    client.hset(layout_item.key(bad_item), layout_item.read_fields[0], b"\xff\xfe not a protobuf")
    client.hset(layout_user.key(bad_user), layout_user.read_fields[0], b"\xff\xfe not a protobuf")
    try:
        settings = settings_for(redis_server.address, model_registry, world, item_refresh_s=0.2)
        with AppClient(create_app(settings)) as api:
            api.wait(0.6)  # a few full refreshes over the corrupt hash
            task = next(t for t in api.services.background if t.get_name() == "item features")
            assert not task.done()
            snapshot = api.services.items.snapshot
            assert bad_item not in snapshot.index and world.items[8] in snapshot.index
            ready = api.get("/readyz")
            assert ready.status_code == 200 and ready.json()["item_cache_age_s"] < 5
            answer = api.post("/v1/rank", json={"user_id": bad_user, "candidates": world.items[:20], "k": 5})
            assert answer.status_code == 200 and "user_features:corrupt" in answer.json()["degraded"]
            metrics = api.get("/metrics").text
            assert 'freshrank_serve_corrupt_rows_total{entity="item"}' in metrics
            assert 'freshrank_serve_corrupt_rows_total{entity="user"}' in metrics
    finally:
        client.hset(layout_item.key(bad_item), mapping=saved_item)
        client.hset(layout_user.key(bad_user), mapping=saved_user)
        client.close()


def test_the_list_and_the_user_row_read_in_one_round_trip_degrade_apart(
    redis_server: Component, model_registry: Path, world: SeededWorld
) -> None:
    import redis

    layout_user = LAYOUTS[USER_VIEW]
    listed_bad_user, bad_listed_user = world.users[4], world.users[5]
    client = redis.Redis(*redis_host_port(redis_server.address))
    saved_user = client.hgetall(layout_user.key(listed_bad_user))
    client.set(user_key(listed_bad_user), encode_candidates(world.items[:50]))
    client.hset(layout_user.key(listed_bad_user), layout_user.read_fields[0], b"\xff\xfe not a protobuf")
    client.set(user_key(bad_listed_user), b"{not json")
    try:
        with AppClient(create_app(settings_for(redis_server.address, model_registry, world))) as api:
            # A good list with a corrupt user row: the list still serves.
            body = api.get(f"/v1/feed/{listed_bad_user}?k=5").json()
            assert body["candidate_source"] == "user" and body["degraded"] == ["user_features:corrupt"]
            assert {i["item_id"] for i in body["items"]} <= set(world.items[:50])
            # A corrupt list with a good user row: popular items, ranked with the user's features.
            body = api.get(f"/v1/feed/{bad_listed_user}?k=5").json()
            assert body["degraded"] == ["candidates:corrupt", "candidates:popular_global"]
            assert body["candidate_source"] == "popular_global" and body["items"]
            # A good list and row in the same pipeline: nothing degraded.
            assert api.get(f"/v1/feed/{world.users[0]}?k=5").json()["degraded"] == []
    finally:
        client.hset(layout_user.key(listed_bad_user), mapping=saved_user)
        client.delete(user_key(listed_bad_user), user_key(bad_listed_user))
        client.close()


def resp(*parts: bytes) -> bytes:
    """One command in Redis's wire format."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def test_a_read_cut_off_by_its_deadline_or_an_error_reply_never_hands_its_replies_to_the_next_read(
    redis_server: Component, world: SeededWorld
) -> None:
    """The request path sends packed commands on pooled connections itself (`RedisOnlineReader._exchange`):
    a connection left with unread replies would answer the next request with another user's row."""
    import asyncio

    import redis

    from serving.online_store import OnlineStoreError, RedisOnlineReader

    user_a, user_b = world.users[0], world.users[1]
    admin = redis.Redis(*redis_host_port(redis_server.address))
    admin.set(user_key(user_b), encode_candidates(world.items[5:9]))
    admin.hset("freshrank:test:a-hash", "f", "v")
    assert redis_server.process is not None

    async def scenario() -> None:
        reader = RedisOnlineReader(RedisOnlineStore(address=redis_server.address, max_connections=1))
        try:
            expected_b = await reader.feed_reads(user_b, user_key(user_b))
            assert expected_b.user is not None and expected_b.candidates == world.items[5:9]
            os.kill(redis_server.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            try:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await reader.feed_reads(user_a, user_key(user_a))
            finally:
                os.kill(redis_server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
            # One connection in the pool: the next read would get user A's replies if it were reused.
            assert await reader.feed_reads(user_b, user_key(user_b)) == expected_b
            # An error reply to the first command (GET of a hash) with the HMGET's reply still unread.
            with pytest.raises(OnlineStoreError, match="WRONGTYPE"):
                await reader.feed_reads(user_a, "freshrank:test:a-hash")
            assert await reader.feed_reads(user_b, user_key(user_b)) == expected_b
            # The same with the second reply still in flight when the error arrives: the pool's own
            # check ("Connection has data") sees nothing to read yet, so only closing the connection
            # keeps the late reply (BLPOP's nil, 0.3 s later) from being taken as user B's row.
            slow_second = resp(b"GET", b"freshrank:test:a-hash") + resp(b"BLPOP", b"freshrank:test:no-list", b"0.3")
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                await reader._exchange(slow_second, 2)
            assert await reader.user_row(user_b) == expected_b.user
            assert await reader.user_row(user_b) == expected_b.user
        finally:
            await reader.close()

    try:
        asyncio.run(scenario())
    finally:
        admin.delete(user_key(user_b), "freshrank:test:a-hash")
        admin.close()


def test_a_corrupt_model_is_refused_and_the_old_model_keeps_serving(
    redis_server: Component, model_registry: Path, world: SeededWorld, tmp_path: Path
) -> None:
    registry = tmp_path / "models"
    shutil.copytree(model_registry, registry)
    good = registry / "ranker" / "1"
    # A frozen clock: features age with time (windows, recency), and the scores compared below
    # must differ only if the model does; the watcher polls on its own timer, not this clock.
    now = wall_clock_ms()
    settings = settings_for(redis_server.address, registry, world, model_poll_s=0.2)
    with AppClient(create_app(settings, clock_ms=lambda: now)) as client:
        rank = {"user_id": world.users[0], "candidates": world.items[:30], "k": 5}
        before = client.post("/v1/rank", json=rank).json()
        assert before["model"]["version"] == 1

        broken = registry / "ranker" / "2"
        shutil.copytree(good, broken)
        (broken / "model.onnx").write_bytes((good / "model.onnx").read_bytes()[:1000])  # truncated
        (broken / "metadata.json").write_text(
            (good / "metadata.json").read_text().replace('"version": 1', '"version": 2')
        )
        # The watcher sees it and refuses it.
        client.wait_for(lambda: "2" in client.get("/v1/admin/models", headers=ADMIN).json()["refused"], what="refusal")
        assert client.get("/v1/admin/models", headers=ADMIN).json()["serving_version"] == 1
        # Even the serving version's file corrupted in place: the validated session keeps answering.
        (good / "model.onnx").write_bytes(b"\x00" * 64)
        refused_twice = 'freshrank_serve_model_loads_total{outcome="refused"} 2.0'
        client.wait_for(lambda: refused_twice in client.get("/metrics").text, what="second refusal")
        after = client.post("/v1/rank", json=rank).json()
        assert after["model"]["version"] == 1 and after["items"] == before["items"] and after["degraded"] == []

        fixed = registry / "ranker" / "3"
        shutil.copytree(model_registry / "ranker" / "1", fixed)
        (fixed / "metadata.json").write_text(
            (fixed / "metadata.json").read_text().replace('"version": 1', '"version": 3')
        )
        client.wait_for(lambda: client.post("/v1/rank", json=rank).json()["model"]["version"] == 3, what="version 3")


def test_freshrank_serve_runs_as_a_process(
    redis_server: Component, model_registry: Path, world: SeededWorld, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "FRESHRANK_SERVE_PORT": str(port),
        "FRESHRANK_SERVE_ONLINE_STORE__ADDRESS": redis_server.address,
        "FRESHRANK_SERVE_MODEL_REGISTRY": str(model_registry),
        "FRESHRANK_SERVE_CATALOG_PATH": str(world.catalog_path),
        "FRESHRANK_SERVE_EVENTS__TYPE": "memory",
        "FRESHRANK_SERVE_ENVIRONMENT": "dev",
    }
    with running(api_component(env, port), tmp_path):
        status, body = http_json(f"http://127.0.0.1:{port}/v1/feed/{world.users[0]}?k=5")
        assert status == 200 and len(body["items"]) == 5 and body["degraded"] == []
        status, spec = http_json(f"http://127.0.0.1:{port}/openapi.json")
        assert status == 200 and "/v1/rank" in spec["paths"]


# --- malformed requests: 4xx with a reason, never 5xx (property-based) --------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=12,
)
TEXT_OR_JUNK = st.text(max_size=140) | st.integers() | st.none() | st.lists(st.text(max_size=3), max_size=3)
RANK_BODIES = JSON | st.fixed_dictionaries(
    {"user_id": TEXT_OR_JUNK},
    optional={
        "candidates": st.lists(st.text(max_size=140) | st.integers(), max_size=20) | TEXT_OR_JUNK,
        "k": st.integers(-3, 1000) | st.floats(allow_nan=False, allow_infinity=False) | TEXT_OR_JUNK,
        "context": st.dictionaries(st.sampled_from(["country", "device", "lang"]), TEXT_OR_JUNK) | TEXT_OR_JUNK,
        "extra": JSON,
    },
)
EVENT = st.fixed_dictionaries(
    {},
    optional={
        "event_id": TEXT_OR_JUNK,
        "user_id": TEXT_OR_JUNK,
        "item_id": TEXT_OR_JUNK,
        "event_type": st.sampled_from(["click", "view", "purchase", ""]) | TEXT_OR_JUNK,
        "event_time": st.integers(-(2**63), 2**63)
        | st.text(max_size=30)
        | st.floats(allow_nan=False, allow_infinity=False),
        "watch_ms": st.integers() | TEXT_OR_JUNK,
        "position": st.integers() | TEXT_OR_JUNK,
        "country": st.text(max_size=3) | TEXT_OR_JUNK,
    },
)
EVENT_BODIES = JSON | st.fixed_dictionaries({"events": st.lists(EVENT | JSON, max_size=8) | JSON})
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def assert_answer_or_reason(response: Any, ok: int) -> None:
    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code == ok:
        return
    assert response.status_code in (400, 404, 413, 422), response.text
    assert body["error"] and body["message"], body


@FUZZ
@given(body=RANK_BODIES)
def test_fuzzed_rank_requests_are_answered_or_refused_with_a_reason(api: AppClient, body: Any) -> None:
    response = api.post("/v1/rank", json=body)
    assert_answer_or_reason(response, 200)
    if response.status_code == 200:
        answer = response.json()
        assert len(answer["items"]) <= (body.get("k") or 20)
        if isinstance(body.get("candidates"), list):
            assert {i["item_id"] for i in answer["items"]} <= set(body["candidates"])


@FUZZ
@given(raw=st.binary(max_size=300))
def test_fuzzed_raw_bodies_are_refused_with_a_reason(api: AppClient, raw: bytes) -> None:
    response = api.post("/v1/rank", content=raw, headers={"content-type": "application/json"})
    assert_answer_or_reason(response, 200)


@FUZZ
@given(user=st.text(min_size=1, max_size=150), k=st.text(max_size=6))
def test_fuzzed_feed_requests_are_answered_or_refused_with_a_reason(api: AppClient, user: str, k: str) -> None:
    response = api.get(f"/v1/feed/{quote(user, safe='')}", params={"k": k} if k else None)
    assert_answer_or_reason(response, 200)


@FUZZ
@given(body=EVENT_BODIES)
def test_fuzzed_event_batches_get_a_verdict_per_event(api: AppClient, body: Any) -> None:
    response = api.post("/v1/events", json=body, headers=INGEST)
    assert_answer_or_reason(response, 202)
    if response.status_code == 202 or (response.status_code == 422 and "accepted" in response.json()):
        verdict = response.json()
        assert verdict["accepted"] + len(verdict["rejected"]) == len(body["events"])
        assert all(r["field"] and r["reason"] for r in verdict["rejected"])


def test_accepted_events_are_on_the_broker_when_the_api_answers(
    redis_server: Component, model_registry: Path, world: SeededWorld, bootstrap: str, fresh_topic: str
) -> None:
    from tests.integration.test_sdk_roundtrip import codec, read_all

    now = wall_clock_ms()
    settings = settings_for(
        redis_server.address,
        model_registry,
        world,
        events=KafkaEvents(bootstrap_servers=bootstrap, topic=fresh_topic),
    )
    batch = [
        {"event_id": f"ack-{n}", "user_id": f"u-{n % 3}", "item_id": "i-1", "event_type": "click", "event_time": now}
        for n in range(20)
    ]
    with AppClient(create_app(settings)) as client:
        response = client.post("/v1/events", json={"events": batch}, headers=INGEST)
        assert response.status_code == 202 and response.json() == {"accepted": 20, "rejected": []}
        # Read while the API (and its producer) still run: acknowledged means already on the broker.
        records = read_all(bootstrap, fresh_topic, expected=20, timeout_s=20)
    decoded = [codec.decode(value) for _, _, value in records]
    assert sorted(getattr(e, "event_id", "undecodable") for e in decoded) == sorted(e["event_id"] for e in batch)
