"""An app on in-memory backends with a real (tiny) ONNX model: the API's behaviour without services."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from feature_repo.definitions import ITEM_VIEW, USER_VIEW
from feature_repo.layout import FeatureRow
from features.candidates import popular_country_key, popular_global_key, user_key
from serving.app import create_app
from serving.events import MemoryEventSink
from serving.online_store import InMemoryOnlineStore
from serving.settings import MemoryEvents, MemoryOnlineStore, ServingSettings
from serving.testing import AppClient, write_linear_model
from simulator.catalog import CatalogItem, write_catalog
from tests.factories import NOW_MS

ITEMS = [f"item-{n}" for n in range(60)]
CATEGORIES = ["news", "sport", "music"]


def item_row(n: int) -> FeatureRow:
    impressions = 100 + n
    clicks = n
    return FeatureRow(
        ITEM_VIEW,
        ITEMS[n],
        {
            "item_impressions_24h": impressions,
            "item_clicks_24h": clicks,
            "item_smoothed_ctr_24h": (clicks + 1) / (impressions + 20),
            "item_trending_velocity": 1.0,
        },
        NOW_MS - 1000,
    )


@pytest.fixture
def store() -> InMemoryOnlineStore:
    memory = InMemoryOnlineStore()
    memory.items = {item_id: item_row(n) for n, item_id in enumerate(ITEMS)}
    memory.lists[user_key("u-1")] = list(ITEMS[:40])
    memory.lists[popular_global_key()] = list(reversed(ITEMS[:30]))
    memory.lists[popular_country_key("DE")] = list(ITEMS[30:50])
    memory.users["u-1"] = FeatureRow(
        USER_VIEW, "u-1", {"user_last_item_ids": ["item-39"], "user_clicks_1h": 2}, NOW_MS - 500
    )
    return memory


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    write_linear_model(tmp_path / "models", 1)
    return tmp_path / "models"


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.parquet"
    items = [
        # item-55.. are new (created a minute ago): explorable.
        CatalogItem(item_id, CATEGORIES[n % 3], "c", 0.0, NOW_MS - (60_000 if n >= 55 else 30 * 86_400_000), 20_000)
        for n, item_id in enumerate(ITEMS)
    ]
    write_catalog(items, path)
    return path


@pytest.fixture
def make_client(
    store: InMemoryOnlineStore, registry_dir: Path, catalog_path: Path
) -> Iterator[Callable[..., AppClient]]:
    clients: list[AppClient] = []

    def make(**overrides: Any) -> AppClient:
        values: dict[str, Any] = {
            "environment": "dev",
            "online_store": MemoryOnlineStore(),
            "events": MemoryEvents(),
            "model_registry": registry_dir,
            "catalog_path": catalog_path,
            **overrides,
        }
        settings = ServingSettings(**values)
        client = AppClient(create_app(settings, store=store, events=MemoryEventSink(), clock_ms=lambda: NOW_MS))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., AppClient]) -> AppClient:
    return make_client()
