"""Candidate lists written by `freshrank candidates` to the real Redis, read back as the feed API reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from cli.main import app
from feature_repo.layout import redis_host_port
from features.candidates import decode_candidates, popular_country_key, popular_global_key, user_key
from simulator.catalog import CatalogItem, write_catalog
from stack.processes import Component
from training.candidates import CandidateConfig, CandidateWriter, generate_candidates
from training.eventlog import write_events
from training.sources import synthetic_source

pytestmark = pytest.mark.integration


def client(component: Component) -> redis.Redis:
    return redis.Redis(*redis_host_port(component.address))


def test_candidates_are_written_with_a_ttl_and_read_back(redis_server: Component) -> None:
    source = synthetic_source(users=200, items=150, seconds=600.0, rate=10.0, seed=3)
    lists = generate_candidates(source.events, source.catalog, config=CandidateConfig(per_user=120))
    writer = CandidateWriter(redis_server.address, ttl_s=3600, batch_size=50)
    writer.open()
    try:
        assert writer.write(lists) == len(lists)
    finally:
        writer.close()
    r = client(redis_server)
    assert len(lists.users) > 50
    for user_id, expected in list(lists.users.items())[:20]:
        key = user_key(user_id)
        assert decode_candidates(r.get(key)) == expected
        assert 0 < r.ttl(key) <= 3600
        assert 0 < len(expected) <= 120
    assert decode_candidates(r.get(popular_global_key())) == lists.popular_global
    for country, expected in lists.popular_by_country.items():
        assert decode_candidates(r.get(popular_country_key(country))) == expected


def test_the_command_reads_an_event_file_and_fills_redis(redis_server: Component, tmp_path: Path) -> None:
    source = synthetic_source(users=100, items=80, seconds=300.0, rate=10.0, seed=4)
    events, catalog = tmp_path / "events.parquet", tmp_path / "catalog.parquet"
    write_events(source.events, events)
    items = [
        CatalogItem(m.item_id, m.category or "", "c", 0.0, m.created_ms or 0, m.duration_ms or 0)
        for m in source.catalog.values()
    ]
    write_catalog(items, catalog)
    result = CliRunner().invoke(
        app,
        [
            "candidates",
            "--events",
            str(events),
            "--catalog",
            str(catalog),
            "--redis",
            redis_server.address,
            "--ttl",
            "600",
            "--per-user",
            "50",
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    r = client(redis_server)
    some_user = source.events[0].user_id
    listed = decode_candidates(r.get(user_key(some_user)))
    assert listed is not None and 0 < len(listed) <= 50
    assert 0 < r.ttl(user_key(some_user)) <= 600
