"""A model trained with declared stream features is served with them: user ones from the user's row, item ones
from the item cache, in the model's column order, after the built-in columns; one the API cannot read is refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from feature_repo.definitions import USER_VIEW
from feature_repo.layout import FeatureRow
from features.candidates import user_key
from features.declared import AggregationSpec, DeclaredView
from features.definitions import MINUTE_MS, SECOND_MS, WindowSpec
from features.ranking import RANKER_FEATURES, ItemMeta, declared_columns, feature_matrix
from serving.online_store import InMemoryOnlineStore
from serving.testing import AppClient, write_linear_model
from tests.factories import NOW_MS
from tests.unit.serving.conftest import CATEGORIES, ITEMS

USER_WATCH = DeclaredView(
    "user_watch",
    "user_id",
    (
        AggregationSpec(
            "watch_seconds_10m", "watch_ms", "sum", WindowSpec("10m", 10 * MINUTE_MS, 10 * SECOND_MS), "int64"
        ),
    ),  # noqa: E501
)
ITEM_CLICKERS = DeclaredView(
    "item_clickers",
    "item_id",
    (
        AggregationSpec(
            "clickers_30m", "user_id", "count_distinct", WindowSpec("30m", 30 * MINUTE_MS, MINUTE_MS), "int64"
        ),
    ),  # noqa: E501
    event_types=frozenset({"click"}),
)
# The model's order (views by name), not the store's: the API must follow the model.
DECLARED = ("item_clickers:clickers_30m", "user_watch:watch_seconds_10m")


def declare(store: InMemoryOnlineStore) -> None:
    """The views in the registry, and their values in the rows (as RedisOnlineReader merges them)."""
    store.declared = (USER_WATCH, ITEM_CLICKERS)
    for n, item_id in enumerate(ITEMS):
        if n % 5:  # every fifth item has no declared value yet: NaN
            row = store.items[item_id]
            store.items[item_id] = row._replace(values={**row.values, "item_clickers:clickers_30m": n % 7})


def reference_scores(
    session: ort.InferenceSession, user: dict[str, Any] | None, store: InMemoryOnlineStore, candidates: list[str]
) -> dict[str, float]:
    rows = [dict(store.items[c].values) if c in store.items else None for c in candidates]
    metas = [ItemMeta(c, CATEGORIES[ITEMS.index(c) % 3], NOW_MS - 30 * 86_400_000, 20_000) for c in candidates]
    built_in = feature_matrix(user, rows, metas, NOW_MS)
    item_part = declared_columns(rows, DECLARED[:1])
    user_part = declared_columns([user] * len(candidates), DECLARED[1:])
    matrix = np.hstack([built_in, item_part, user_part]).astype(np.float32)
    scores = session.run(["probabilities"], {"features": matrix})[0][:, 1]
    return {c: float(s) for c, s in zip(candidates, scores, strict=True)}


def test_declared_columns_reach_the_model_in_its_order(
    make_client: Callable[..., AppClient], store: InMemoryOnlineStore, registry_dir: Path
) -> None:
    declare(store)
    weights = [0.0] * len(RANKER_FEATURES) + [0.3, 0.0004]  # only the declared columns move the scores
    write_linear_model(registry_dir, 2, weights=weights, bias=-1.0, feature_names=[*RANKER_FEATURES, *DECLARED])
    client = make_client()
    session = ort.InferenceSession(str(registry_dir / "ranker" / "2" / "model.onnx"))
    candidates = ITEMS[:30]
    for user_id, watched in (("watcher", 4_000), ("no-declared-row", None), ("unknown-user", "absent")):
        user: dict[str, Any] | None = None
        if watched != "absent":
            user = {"user_clicks_1h": 1, "user_last_item_ids": []}
            if watched is not None:
                user["user_watch:watch_seconds_10m"] = watched
            store.users[user_id] = FeatureRow(USER_VIEW, user_id, user, NOW_MS - 1000)
        store.lists[user_key(user_id)] = candidates
        expected = reference_scores(session, user, store, candidates)
        # The rank route (FastAPI) and the feed route (FeedFastPath, on the user's cached list).
        for response in (
            client.post("/v1/rank", json={"user_id": user_id, "candidates": candidates, "k": 10}),
            client.get(f"/v1/feed/{user_id}?k=10"),
        ):
            assert response.status_code == 200
            body = response.json()
            assert body["model"] == {"name": "ranker", "version": 2}
            for item in body["items"]:
                np.testing.assert_allclose(item["score"], expected[item["item_id"]], rtol=1e-6, atol=1e-7)
    # The declared columns were used: the watcher's scores differ from those of a user without the value.
    assert reference_scores(session, {"user_watch:watch_seconds_10m": 4_000}, store, candidates) != reference_scores(
        session, {}, store, candidates
    )


def test_a_model_taking_declared_features_the_api_does_not_read_is_refused_and_the_last_one_serves(
    make_client: Callable[..., AppClient], store: InMemoryOnlineStore, registry_dir: Path
) -> None:
    store.declared = (USER_WATCH,)  # item_clickers was never applied: its values are nowhere to read
    names = [*RANKER_FEATURES, *DECLARED]
    write_linear_model(registry_dir, 2, weights=[0.0] * len(names), feature_names=names)
    client = make_client()
    refused = client.services.registry.refused
    assert 2 in refused and "item_clickers:clickers_30m" in refused[2] and "user_watch" not in refused[2]
    response = client.post("/v1/rank", json={"user_id": "u-1", "candidates": ITEMS[:10], "k": 5})
    assert response.status_code == 200 and response.json()["model"]["version"] == 1
