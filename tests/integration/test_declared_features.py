"""A streaming feature declared with Feast's own objects and CLI, computed by the stream job and read back with Feast.

As a user does it: a Feast file in a copy of freshrank's feature repo, `freshrank
features check`, `feast apply`, `freshrank stream`; then every user's and item's
values from `get_online_features` equal the pure replay as of the row's as_of_ms.
A view the job cannot run stops `freshrank stream` before Flink starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from feature_repo.declared import drafts_from_registry
from feature_repo.store import apply, open_store
from features.declared import DeclaredView, replay_declared, validate_all
from features.events import InteractionEvent
from features.ranking import RANKER_FEATURES
from serving.app import create_app
from serving.settings import KafkaEvents, RedisOnlineStore, ServingSettings
from serving.testing import AppClient, write_linear_model
from simulator.catalog import write_catalog
from stack.processes import Component
from tests.feast_repos import SOURCE, team_repo
from tests.integration.streamjob import (
    StreamJob,
    encoded,
    expected_features,
    produce_raw,
    same,
    wait_exact,
    wait_for_checkpointed_progress,
    with_resends_and_disorder,
    world_events,
)

LATENESS_MS = 300_000
# Feast warns on every StreamFeatureView it builds (reading the registry too) that they are alpha.
pytestmark = pytest.mark.filterwarnings("ignore:Stream feature views are experimental:RuntimeWarning")

VIEWS = """
user_watch = StreamFeatureView(
    name="user_watch{suffix}",
    entities=[user],
    source=interactions,
    timestamp_field="event_time",
    ttl=timedelta(days=1),
    schema=[
        Field(name="watch_seconds_10m", dtype=Int64),
        Field(name="mean_watch_ms_600s", dtype=Float64),
        Field(name="count_distinct_item_id_3600s", dtype=Int64),
        Field(name="max_position_60s", dtype=Int64),
        Field(name="as_of_ms", dtype=Int64),
    ],
    aggregations=[
        Aggregation(column="watch_ms", function="sum", time_window=timedelta(minutes=10),
                    slide_interval=timedelta(seconds=10), name="watch_seconds_10m"),
        Aggregation(column="watch_ms", function="mean", time_window=timedelta(minutes=10),
                    slide_interval=timedelta(seconds=10)),
        Aggregation(column="item_id", function="count_distinct", time_window=timedelta(hours=1),
                    slide_interval=timedelta(minutes=1)),
        Aggregation(column="position", function="max", time_window=timedelta(seconds=60),
                    slide_interval=timedelta(seconds=5)),
    ],
)

item_clickers = StreamFeatureView(
    name="item_clickers{suffix}",
    entities=[item],
    source=interactions,
    timestamp_field="event_time",
    ttl=timedelta(days=1),
    tags={{"freshrank.event_types": "click"}},
    schema=[Field(name="count_distinct_user_id_1800s", dtype=Int64), Field(name="as_of_ms", dtype=Int64)],
    aggregations=[
        Aggregation(column="user_id", function="count_distinct", time_window=timedelta(minutes=30),
                    slide_interval=timedelta(seconds=30)),
    ],
)
"""


def user_repo(tmp_path: Path, topic: str, views: str, suffix: str = "") -> Path:
    """A copy of freshrank's feature repo with the user's file added, as a team would keep it.

    `suffix` names the views apart from other tests' (Redis is shared by the session; a row another
    test wrote for the same item would look like one this test's job wrote)."""
    return team_repo(tmp_path, views.format(suffix=suffix), topic)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def job(
    tmp_path: Path, bootstrap: str, redis_server: Component, fresh_topic: str, dlq_topic: str
) -> Iterator[StreamJob]:
    job = StreamJob.configured(
        tmp_path,
        bootstrap=bootstrap,
        topic=fresh_topic,
        dlq_topic=dlq_topic,
        redis_address=redis_server.address,
        feast_registry=tmp_path / "registry.db",
        catalog=tmp_path / "catalog.parquet",
        lateness_ms=str(LATENESS_MS),
        checkpoint_interval_ms="1000",
    )
    yield job
    job.kill()


def declared_mismatches(
    redis_address: str, registry: Path, views: list[DeclaredView], groups: dict[str, dict[str, list[InteractionEvent]]]
) -> list[str]:
    """Every difference between what Feast serves for the declared views and the replay as of each row's as_of_ms."""
    store = open_store(redis_address, registry)
    problems: list[str] = []
    for view in views:
        by_entity = groups[view.entity_key]
        ids = sorted(by_entity)
        refs = [f"{view.name}:{name}" for name in (*view.feature_names, "as_of_ms")]
        rows = store.get_online_features(features=refs, entity_rows=[{view.entity_key: i} for i in ids]).to_dict()
        for index, entity in enumerate(ids):
            want = replay_declared(view, by_entity[entity], 2**62)
            as_of = rows["as_of_ms"][index]
            if want is None:
                if as_of is not None:
                    problems.append(f"{view.name} {entity}: a row, but no event passes the filter")
                continue
            if as_of is None:
                problems.append(f"{view.name} {entity}: no row")
                continue
            newest = max(e.event_time_ms for e in by_entity[entity] if view.admits(e))
            expected: dict[str, Any] = replay_declared(view, by_entity[entity], max(as_of, newest)) or {}
            for name, value in expected.items():
                got = rows[name][index]
                if not (same(got, value) if value is not None else got is None):
                    problems.append(f"{view.name} {entity} {name}: online {got!r} != replay {value!r}")
    return problems


def test_a_view_declared_with_feast_is_computed_by_the_stream_job_and_read_back_with_feast(
    tmp_path: Path, job: StreamJob, bootstrap: str, redis_server: Component, fresh_topic: str
) -> None:
    repo = user_repo(tmp_path, fresh_topic, VIEWS)
    checked = cli("features", "check", "--repo", str(repo), "--topic", fresh_topic)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "watch_seconds_10m = sum(watch_ms) over 600 s in 60 buckets of 10 s" in checked.stdout
    registry = tmp_path / "registry.db"
    apply(redis_server.address, registry, repo=repo)
    views, refused = validate_all(drafts_from_registry(open_store(redis_server.address, registry)), fresh_topic)
    assert refused == [] and [v.name for v in views] == ["item_clickers", "user_watch"]

    events, categories, world = world_events(2000, seed=12)
    write_catalog(world.catalog(), tmp_path / "catalog.parquet")
    log = with_resends_and_disorder(events, seed=12)
    produce_raw(bootstrap, fresh_topic, list(encoded(log)))
    job.start()
    by_user, by_item = expected_features(log, categories, LATENESS_MS)
    groups = {"user_id": dict(by_user), "item_id": dict(by_item)}
    problems = wait_exact(lambda: declared_mismatches(redis_server.address, registry, views, groups), timeout_s=240)
    assert problems == [], problems[:20]
    assert "declared view user_watch (by user_id)" in job.flink_log() + job.log_path.read_text()
    api_serves_a_model_trained_on_the_views(tmp_path, bootstrap, redis_server, fresh_topic, registry, views, groups)


def api_serves_a_model_trained_on_the_views(
    tmp_path: Path,
    bootstrap: str,
    redis_server: Component,
    topic: str,
    registry: Path,
    views: list[DeclaredView],
    groups: dict[str, dict[str, list[InteractionEvent]]],
) -> None:
    """The feed API reads the views from the same registry, their values from the job's rows, and serves a
    model whose inputs name them; what it reads for an entity is what Feast serves."""
    declared = [name for view in views for name in view.input_names]
    models = tmp_path / "models"
    weights = [0.0] * len(RANKER_FEATURES) + [0.001] * len(declared)
    write_linear_model(models, 1, weights=weights, bias=-1.0, feature_names=[*RANKER_FEATURES, *declared])
    settings = ServingSettings(
        environment="dev",
        online_store=RedisOnlineStore(address=redis_server.address, feast_registry=registry),
        events=KafkaEvents(bootstrap_servers=bootstrap, topic=topic),
        model_registry=models,
        catalog_path=tmp_path / "catalog.parquet",
    )
    store = open_store(redis_server.address, registry)
    with AppClient(create_app(settings)) as client:
        services = client.services
        assert services.registry.refused == {} and services.registry.models.latest.version == 1
        for view in views:
            ids = sorted(groups[view.entity_key])[:20]
            refs = [f"{view.name}:{name}" for name in view.feature_names]
            feast = store.get_online_features(features=refs, entity_rows=[{view.entity_key: i} for i in ids]).to_dict()
            if view.entity_key == "user_id":
                rows = {i: client.run(services.store.user_row(i)) for i in ids}
            else:
                rows = client.run(services.store.item_rows(ids))
            for index, entity in enumerate(ids):
                row = rows.get(entity)
                for name in view.feature_names:
                    got = None if row is None else row.values.get(f"{view.name}:{name}")
                    assert same(got, feast[name][index]), (view.name, entity, name, got, feast[name][index])
        user = sorted(groups["user_id"])[0]
        answer = client.post("/v1/rank", json={"user_id": user, "candidates": sorted(groups["item_id"])[:20]})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"]["version"] == 1 and not [r for r in body["degraded"] if r.startswith("model:")]


def test_a_view_the_job_cannot_run_stops_it_at_start_with_view_field_and_reason(
    tmp_path: Path, job: StreamJob, redis_server: Component, fresh_topic: str
) -> None:
    bad = VIEWS.replace('function="mean"', 'function="median"')
    repo = user_repo(tmp_path, fresh_topic, bad)
    checked = cli("features", "check", "--repo", str(repo), "--topic", fresh_topic)
    assert checked.returncode == 1
    assert "user_watch: aggregation median_watch_ms_600s: unknown function 'median'" in checked.stdout
    apply(redis_server.address, tmp_path / "registry.db", repo=repo)  # Feast itself accepts any function name
    done = subprocess.run(
        [sys.executable, "-m", "cli", "stream"],
        env={**os.environ, **job.env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1
    assert "unknown function 'median'" in done.stdout + done.stderr


def test_declared_state_survives_a_sigkill_and_a_changed_view_keeps_what_it_can(
    tmp_path: Path, job: StreamJob, bootstrap: str, redis_server: Component, fresh_topic: str
) -> None:
    repo = user_repo(tmp_path, fresh_topic, VIEWS, suffix="_restored")
    registry = tmp_path / "registry.db"
    apply(redis_server.address, registry, repo=repo)
    views, _ = validate_all(drafts_from_registry(open_store(redis_server.address, registry)), fresh_topic)
    events, categories, world = world_events(3000, seed=13)
    write_catalog(world.catalog(), tmp_path / "catalog.parquet")
    log = with_resends_and_disorder(events, seed=13)
    produce_raw(bootstrap, fresh_topic, list(encoded(log[: len(log) // 2])))
    job.start()
    wait_for_checkpointed_progress(job, tmp_path / "checkpoints", len(log) // 8, timeout_s=180)
    produce_raw(bootstrap, fresh_topic, list(encoded(log[len(log) // 2 :])))
    job.kill(signal.SIGKILL)

    # The team adds an aggregation to user_watch and applies again before the job comes back.
    changed = VIEWS.replace(
        '        Field(name="as_of_ms", dtype=Int64),\n    ],\n    aggregations=[\n',
        '        Field(name="as_of_ms", dtype=Int64),\n        Field(name="max_watch_ms_600s", dtype=Int64),\n'
        '    ],\n    aggregations=[\n        Aggregation(column="watch_ms", function="max", '
        "time_window=timedelta(minutes=10), slide_interval=timedelta(seconds=10)),\n",
        1,
    )
    assert changed != VIEWS
    (repo / "team_features.py").write_text(SOURCE.format(topic=fresh_topic) + changed.format(suffix="_restored"))
    apply(redis_server.address, registry, repo=repo)
    job.start()
    by_user, by_item = expected_features(log, categories, LATENESS_MS)
    groups = {"user_id": dict(by_user), "item_id": dict(by_item)}
    # The aggregations that did not change are exact over both halves: their state was restored.
    problems = wait_exact(lambda: declared_mismatches(redis_server.address, registry, views, groups), timeout_s=240)
    assert problems == [], problems[:20]
    flink_log = job.flink_log()
    assert "declared view user_watch_restored changed since its state was saved" in flink_log
    assert "new and warming up ['max_watch_ms_600s']" in flink_log
    assert "resuming from" in job.log_path.read_text()
