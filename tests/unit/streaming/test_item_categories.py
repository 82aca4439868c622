"""The stream job's catalog: a half-written file never replaces a good catalog."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from simulator.catalog import write_catalog
from simulator.config import WorldConfig
from simulator.world import SyntheticWorld
from streaming.operators import ItemCategories


def failures() -> float:
    return REGISTRY.get_sample_value("freshrank_stream_catalog_reload_failures_total") or 0.0


def test_a_half_written_catalog_is_refused_and_the_old_one_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reader child is the `python3` on PATH, as in the job (whose PATH starts with the venv).
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    path = tmp_path / "catalog.parquet"
    items = list(SyntheticWorld(WorldConfig(users=5, items=30, seed=3, start_ms=1_790_000_000_000)).catalog())
    write_catalog(items, path)
    catalog = ItemCategories(path)
    catalog.maybe_reload()
    assert len(catalog) == len(items) and catalog.category(items[0].item_id) == items[0].category

    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # a writer that does not rename, caught half-way
    before = failures()
    catalog._checked = 0.0  # the 10 s between checks have passed
    catalog.maybe_reload()
    assert failures() == before + 1
    assert len(catalog) == len(items) and catalog.category(items[0].item_id) == items[0].category


def test_write_catalog_replaces_the_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "catalog.parquet"
    write_catalog(
        list(SyntheticWorld(WorldConfig(users=5, items=10, seed=1, start_ms=1_790_000_000_000)).catalog()), path
    )
    assert [p.name for p in tmp_path.iterdir()] == ["catalog.parquet"]  # no temporary file left behind
