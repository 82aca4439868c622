"""The feed API on in-memory backends: answers, fallbacks, auth, limits, events, ops endpoints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest

from features.candidates import user_key
from features.ranking import RANKER_FEATURES
from serving.api import plain_feed_query
from serving.online_store import InMemoryOnlineStore
from serving.schemas import RankResponse
from serving.testing import AppClient, write_linear_model
from tests.factories import NOW_MS
from tests.unit.serving.conftest import ITEMS

KEY = {"X-API-Key": "dev-key"}
ADMIN = {"X-API-Key": "dev-admin-key"}


def event(**overrides: Any) -> dict[str, Any]:
    return {
        "event_id": "e-1",
        "user_id": "u-1",
        "item_id": "item-1",
        "event_type": "click",
        "event_time": NOW_MS - 1000,
        **overrides,
    }


def test_feed_ranks_the_cached_list_by_score_with_policies(client: AppClient) -> None:
    body = client.get("/v1/feed/u-1?k=10").json()
    assert body["candidate_source"] == "user" and body["degraded"] == []
    assert body["model"] == {"name": "ranker", "version": 1} and body["arm"] == "default"
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert "item-39" not in ids  # seen recently
    assert [i["position"] for i in body["items"]] == list(range(10))
    exploit = [i["score"] for i in body["items"] if not i["explored"]]
    assert exploit[0] == max(exploit)


def test_rank_orders_given_candidates_by_model_score(client: AppClient) -> None:
    body = client.post("/v1/rank", json={"user_id": "u-2", "candidates": ITEMS[:6], "k": 3}).json()
    assert body["candidate_source"] == "request"
    assert body["degraded"] == ["user_features:absent"]
    # item-n's smoothed CTR grows with n and the default model weighs it positively.
    assert [i["item_id"] for i in body["items"]] == ["item-5", "item-4", "item-3"]


def test_fallback_hierarchy_when_the_user_has_no_list(client: AppClient) -> None:
    by_country = client.post("/v1/rank", json={"user_id": "new", "k": 5, "context": {"country": "DE"}}).json()
    assert by_country["candidate_source"] == "popular_country"
    assert "candidates:popular_country" in by_country["degraded"]
    assert {i["item_id"] for i in by_country["items"]} <= set(ITEMS[30:50])
    global_ = client.get("/v1/feed/new?k=5").json()
    assert global_["candidate_source"] == "popular_global" and "candidates:popular_global" in global_["degraded"]


def test_store_down_every_answer_is_200_and_says_why(client: AppClient, store: InMemoryOnlineStore) -> None:
    store.down = True
    for _ in range(5):
        response = client.get("/v1/feed/u-1?k=5")
        assert response.status_code == 200
        body = response.json()
        assert body["items"], "popular lists held in process still give a feed"
        assert {"candidates:store_unavailable", "user_features:store_unavailable"} <= set(body["degraded"])
        assert body["candidate_source"] == "popular_global"
    store.down = False


def test_slow_store_hits_the_deadline_and_degrades(
    make_client: Callable[..., AppClient], store: InMemoryOnlineStore
) -> None:
    client = make_client(candidates_deadline_ms=5, user_features_deadline_ms=5, breaker_failures=100)
    store.delay_s = 0.05
    body = client.get("/v1/feed/u-1?k=5").json()
    store.delay_s = 0.0
    assert "candidates:deadline" in body["degraded"] and "user_features:deadline" in body["degraded"]
    # Every app counts in its own registry (serving/metrics.py, `ServingMetrics`): this request is its only one.
    metrics = client.get("/metrics").text
    line = next(
        m
        for m in metrics.splitlines()
        if m.startswith('freshrank_serve_fallbacks_total{reason="user_features:deadline"}')
    )
    assert float(line.rsplit(" ", 1)[1]) == 1.0


def test_no_model_still_answers_in_ctr_order(make_client: Callable[..., AppClient], tmp_path: Path) -> None:
    client = make_client(model_registry=tmp_path / "empty")
    response = client.post("/v1/rank", json={"user_id": "u-1", "candidates": ITEMS[:5], "k": 5})
    body = response.json()
    assert response.status_code == 200 and body["model"] is None and "model:missing" in body["degraded"]
    assert [i["item_id"] for i in body["items"]][:2] == ["item-4", "item-3"]
    assert client.get("/readyz").status_code == 503


def test_ab_arms_use_their_pinned_model_versions(
    make_client: Callable[..., AppClient], registry_dir: Path, tmp_path: Path
) -> None:
    write_linear_model(registry_dir, 2, weights=[0.0] * len(RANKER_FEATURES))
    config = tmp_path / "exp.yaml"
    config.write_text("salt: t\narms:\n  - {name: old, weight: 1, model_version: 1}\n  - {name: new, weight: 1}\n")
    client = make_client(experiments_path=config)
    versions: dict[str, set[int]] = {"old": set(), "new": set()}
    for n in range(40):
        body = client.post("/v1/rank", json={"user_id": f"user-{n}", "candidates": ITEMS[:3]}).json()
        versions[body["arm"]].add(body["model"]["version"])
    assert versions == {"old": {1}, "new": {2}}
    status = client.get("/v1/admin/models", headers=ADMIN).json()
    assert status["loaded_versions"] == [1, 2]
    assert {a["name"]: a["serving_version"] for a in status["arms"]} == {"old": 1, "new": 2}


def test_a_new_model_version_is_picked_up_and_a_broken_one_refused(client: AppClient, registry_dir: Path) -> None:
    broken = write_linear_model(registry_dir, 2)
    (broken / "model.onnx").write_bytes(b"junk")
    status = client.post("/v1/admin/reload", headers=ADMIN).json()
    assert status["serving_version"] == 1 and "2" in status["refused"]
    assert client.post("/v1/rank", json={"user_id": "u", "candidates": ["item-1"]}).json()["model"]["version"] == 1
    write_linear_model(registry_dir, 3)
    assert client.post("/v1/admin/reload", headers=ADMIN).json()["serving_version"] == 3


@pytest.mark.parametrize(
    "body, field",
    [
        ({"user_id": "u", "k": 0}, "body.k"),
        ({"user_id": "u", "k": 1000}, "k"),
        ({"user_id": ""}, "body.user_id"),
        ({"user_id": "   "}, "body.user_id"),
        ({"user_id": "u", "candidates": [""]}, "body.candidates.0"),
        ({"user_id": "u", "candidates": ["x"] * 1001}, "candidates"),
        ({"user_id": "u", "candidate": ["x"]}, "body.candidate"),
        ({"user_id": "u", "context": {"country": "Germany"}}, "body.context.country"),
        ({"k": 3}, "body.user_id"),
        ([1, 2], "body"),
    ],
)
def test_malformed_rank_requests_are_422_naming_the_field(client: AppClient, body: Any, field: str) -> None:
    response = client.post("/v1/rank", json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] == "invalid_request" and error["message"]
    assert any(d["field"] == field for d in error["details"]), error


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/v1/feed/u-1?k=0", "query.k"),
        ("/v1/feed/u-1?k=-3", "query.k"),
        ("/v1/feed/u-1?k=abc", "query.k"),
        ("/v1/feed/u-1?k=", "query.k"),
        ("/v1/feed/u-1?k=201", "k"),  # over max_k
        ("/v1/feed/u-1?country=us", "query.country"),
        ("/v1/feed/u-1?country=DEU", "query.country"),
        ("/v1/feed/u-1?k=5&country=", "query.country"),
        ("/v1/feed/" + "u" * 129, "path.user_id"),
        ("/v1/feed/%20%20", "user_id"),
    ],
)
def test_malformed_feed_requests_are_422_naming_the_field(client: AppClient, url: str, field: str) -> None:
    # Valid feed requests are answered by FeedFastPath; anything else must still get the route's own errors.
    response = client.get(url)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] == "invalid_request" and any(d["field"] == field for d in error["details"]), error


@pytest.mark.parametrize(
    ("url", "plain"),
    [
        ("/v1/feed/u-1", True),
        ("/v1/feed/u-1?k=7", True),
        ("/v1/feed/u-1?k=7&country=DE", True),
        ("/v1/feed/new?country=DE&k=4", True),
        ("/v1/feed/u-1?k=07", False),  # what the route accepts but the fast path leaves to it
        ("/v1/feed/u-1?k=7&utm=x", False),
        ("/v1/feed/u-1?k=7&k=7", False),
        ("/v1/feed/u%2D1?k=7", True),  # the server decodes the path: the same user
        ("/v1/feed/u-1?k=%37", False),
        ("/v1/feed/new?country=DE&k=4&debug", False),
    ],
)
def test_feed_answers_are_the_same_through_both_paths(client: AppClient, url: str, plain: bool) -> None:
    """FeedFastPath answers plainly valid requests, FastAPI's route the rest: same status, same answer."""
    path, _, query = url.partition("?")
    user_id = unquote(path.removeprefix("/v1/feed/"))
    assert (plain_feed_query(user_id, query.encode(), 20, 200) is not None) is plain
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    RankResponse.model_validate(body)
    reference = client.get(url.replace("?", "?unknown=1&") if "?" in url else url + "?unknown=1").json()
    assert plain_feed_query(user_id, b"unknown=1", 20, 200) is None  # the reference took FastAPI's route
    for answer in (body, reference):
        answer.pop("request_id")
    assert body == reference


def test_other_feed_paths_and_methods_are_left_to_the_router(client: AppClient) -> None:
    assert client.get("/v1/feed/u-1/").status_code == 404
    assert client.get("/v1/feed/").status_code == 404
    assert client.post("/v1/feed/u-1").status_code == 405


def test_not_json_is_400_and_too_large_is_413(client: AppClient) -> None:
    response = client.post("/v1/rank", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == "malformed_body"
    huge = b'{"user_id": "u", "candidates": [' + b'"x",' * 400_000 + b'"y"]}'
    response = client.post("/v1/rank", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"


def test_events_need_an_api_key(client: AppClient) -> None:
    assert client.post("/v1/events", json={"events": [event()]}).status_code == 401
    wrong = client.post("/v1/events", json={"events": [event()]}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    ok = client.post("/v1/events", json={"events": [event()]}, headers={"Authorization": "Bearer dev-key"})
    assert ok.status_code == 202
    assert client.get("/v1/admin/models").status_code == 401


def test_ingest_keys_do_not_open_the_admin_endpoints(
    make_client: Callable[..., AppClient],
) -> None:
    client = make_client()
    assert client.get("/v1/admin/models", headers=KEY).status_code == 401
    assert client.post("/v1/events", json={"events": [event()]}, headers=ADMIN).status_code == 401
    assert client.get("/v1/admin/models", headers=ADMIN).status_code == 200
    production = make_client(environment="production", api_keys="ingest-only")
    off = production.get("/v1/admin/models", headers={"X-API-Key": "ingest-only"})
    assert off.status_code == 403 and "FRESHRANK_SERVE_ADMIN_KEYS" in off.json()["message"]
    assert (
        production.post("/v1/events", json={"events": [event()]}, headers={"X-API-Key": "ingest-only"}).status_code
        == 202
    )


def test_events_are_judged_one_by_one(client: AppClient) -> None:
    batch = [
        event(event_id="good-1"),
        event(event_id="bad-type", event_type="purchase"),
        event(event_id="bad-time", event_time=NOW_MS + 86_400_000),
        event(event_id="good-2", event_time="2026-11-18T10:00:00Z"),
        {"event_id": "no-user", "item_id": "i", "event_type": "view", "event_time": NOW_MS},
        event(event_id="naive", event_time="2026-11-18T10:00:00"),
        "not an object",
    ]
    response = client.post("/v1/events", json={"events": batch}, headers=KEY)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    reasons = {r["index"]: (r["event_id"], r["field"]) for r in body["rejected"]}
    assert reasons == {
        1: ("bad-type", "event_type"),
        2: ("bad-time", "event_time"),
        4: ("no-user", "user_id"),
        5: ("naive", "event_time"),
        6: (None, "event"),
    }
    sink = client.services.events
    assert [e.event_id for e in sink.events] == ["good-1", "good-2"]


def test_a_batch_with_only_bad_events_is_422_and_too_many_events_are_refused(client: AppClient) -> None:
    response = client.post("/v1/events", json={"events": [event(event_type="nope")]}, headers=KEY)
    assert response.status_code == 422 and response.json()["accepted"] == 0
    too_many = client.post("/v1/events", json={"events": [event()] * 501}, headers=KEY)
    assert too_many.status_code == 422 and too_many.json()["details"][0]["field"] == "events"


def test_backpressure_names_the_events_to_resend(client: AppClient) -> None:
    sink = client.services.events
    sink.capacity = 1
    batch = [event(event_id="a"), event(event_id="bad", event_type="x"), event(event_id="b")]
    body = client.post("/v1/events", json={"events": batch}, headers=KEY).json()
    assert body["accepted"] == 1
    assert [(r["index"], r["event_id"]) for r in body["rejected"]] == [(1, "bad"), (2, "b")]
    full = client.post("/v1/events", json={"events": [event(event_id="c")]}, headers=KEY)
    assert full.status_code == 503 and "retry-after" in full.headers


def test_ops_endpoints(client: AppClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["model_version"] == 1 and ready["catalog_items"] == len(ITEMS)
    client.get("/v1/feed/u-1")
    metrics = client.get("/metrics").text
    for series in (
        'freshrank_serve_requests_total{route="/v1/feed/{user_id}",status="200"}',
        'freshrank_serve_stage_seconds_count{stage="score"}',
        'freshrank_serve_feature_age_seconds_count{entity="user"}',
        'freshrank_serve_model_version{arm="default"} 1.0',
    ):
        assert series in metrics, series
    spec = client.get("/openapi.json").json()
    assert {"/v1/rank", "/v1/feed/{user_id}", "/v1/events", "/readyz", "/metrics"} <= set(spec["paths"])


def test_item_features_are_cached_and_refreshed_off_the_request_path(
    client: AppClient, store: InMemoryOnlineStore
) -> None:
    cached = client.services.items.snapshot
    assert set(ITEMS[:50]) <= set(cached.index)  # lists + catalog were read at start
    before = client.post("/v1/rank", json={"user_id": "u", "candidates": ["item-1", "item-2"]}).json()
    store.items["item-1"] = store.items["item-59"]
    after = client.post("/v1/rank", json={"user_id": "u", "candidates": ["item-1", "item-2"]}).json()
    assert before["items"] == after["items"]  # no read on the request path
    client.run(client.services.items.refresh())
    refreshed = client.post("/v1/rank", json={"user_id": "u", "candidates": ["item-1", "item-2"]}).json()
    assert refreshed["items"][0]["score"] > before["items"][0]["score"]
    assert np.isfinite([i["score"] for i in refreshed["items"]]).all()


def test_unknown_items_are_read_in_the_background_after_a_miss(client: AppClient, store: InMemoryOnlineStore) -> None:
    store.items["brand-new"] = store.items["item-59"]
    first = client.post("/v1/rank", json={"user_id": "u", "candidates": ["brand-new"]}).json()
    assert "item_features:partial" in first["degraded"]
    client.wait(0.3)
    second = client.post("/v1/rank", json={"user_id": "u", "candidates": ["brand-new"]}).json()
    assert "item_features:partial" not in second["degraded"]
    assert second["items"][0]["score"] > first["items"][0]["score"]


def test_new_users_and_lists_from_redis_are_the_store_contract(client: AppClient, store: InMemoryOnlineStore) -> None:
    store.lists[user_key("u-9")] = ["item-3", "item-3", "item-4"]
    body = client.get("/v1/feed/u-9").json()
    assert sorted(i["item_id"] for i in body["items"]) == ["item-3", "item-4"]  # duplicates dropped


def test_a_beacon_carries_the_key_in_the_query_and_json_as_text_plain(client: AppClient) -> None:
    body = json.dumps({"events": [event(event_id="beacon-1"), event(event_id="bad", event_type="nope")]})
    plain = {"content-type": "text/plain;charset=UTF-8"}
    assert client.post("/v1/events/beacon?key=nope", content=body, headers=plain).status_code == 401
    response = client.post("/v1/events/beacon?key=dev-key", content=body, headers=plain)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 1 and response.json()["rejected"][0]["field"] == "event_type"
    assert [e.event_id for e in client.services.events.events] == ["beacon-1"]
    broken = client.post("/v1/events/beacon?key=dev-key", content="{nope", headers=plain)
    assert broken.status_code == 400 and broken.json()["error"] == "malformed_body"


def test_cors_lets_only_the_configured_origins_post_events(make_client: Callable[..., AppClient]) -> None:
    client = make_client(cors_origins="https://app.example.com")
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-api-key"}
    allowed = client.request("OPTIONS", "/v1/events", headers={"Origin": "https://app.example.com", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    refused = client.request("OPTIONS", "/v1/events", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers
