"""Speed-ups of the request path must not change the ranking.

Each answer of the API (in-memory store, a real ONNX model, every policy on) is
recomputed here the plain way: `feature_matrix` from row dicts and catalog
metadata (the code training uses), the ONNX session run on it directly, and
`choose_slate` fed with inputs built from the same dicts. The items, their order,
positions and exploration flags must be identical and the scores equal to
float32 precision, for users with and without rows, items missing from the
store or the catalog, NaN-producing values and duplicate candidates, through both the
rank route (FastAPI) and the feed route (FeedFastPath, on the user's cached list).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from feature_repo.definitions import USER_VIEW
from feature_repo.layout import FeatureRow
from features.candidates import user_key
from features.definitions import CTR_PRIOR_ALPHA, CTR_PRIOR_BETA
from features.ranking import ItemMeta, feature_matrix
from serving.online_store import InMemoryOnlineStore
from serving.policies import PolicyConfig, choose_slate
from serving.schemas import RankResponse
from serving.testing import AppClient, write_linear_model
from tests.factories import NOW_MS
from tests.unit.serving.conftest import CATEGORIES, ITEMS

NEW_ITEM_MAX_AGE_MS = 86_400_000


def reference_answer(
    body: dict[str, Any],
    user: dict[str, Any] | None,
    store: InMemoryOnlineStore,
    metas: dict[str, ItemMeta],
    session: ort.InferenceSession,
    candidates: list[str],
    k: int,
) -> list[tuple[str, float, bool]]:
    rows = [dict(store.items[c].values) if c in store.items else None for c in candidates]
    matrix = feature_matrix(user, rows, [metas.get(c) for c in candidates], NOW_MS)
    scores = session.run(["probabilities"], {"features": matrix})[0][:, 1].astype(np.float64)
    last = user.get("user_last_item_ids") if user else None
    seen = np.array([isinstance(last, list) and c in last for c in candidates], dtype=bool)
    created = [metas[c].created_ms if c in metas else None for c in candidates]
    explorable = np.array([m is not None and m >= NOW_MS - NEW_ITEM_MAX_AGE_MS for m in created], dtype=bool)

    def count(row: dict[str, Any] | None, name: str) -> float:
        value = row.get(name) if row else None
        return max(float(value), 0.0) if isinstance(value, int | float) else 0.0

    clicks = np.array([count(r, "item_clicks_24h") for r in rows])
    impressions = np.array([count(r, "item_impressions_24h") for r in rows])
    categories = [metas[c].category if c in metas else None for c in candidates]
    policy = PolicyConfig(exploration_share=0.1, max_run=2, prior_alpha=CTR_PRIOR_ALPHA, prior_beta=CTR_PRIOR_BETA)
    rng = np.random.default_rng(zlib.crc32(body["request_id"].encode()))
    slate = choose_slate(scores, categories, seen, explorable, clicks, impressions, k, policy, rng)
    return [(candidates[s.index], float(scores[s.index]), s.explored) for s in slate]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_answer_equals_the_plain_recomputation(
    make_client: Callable[..., AppClient], store: InMemoryOnlineStore, registry_dir: Any, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    # Non-zero weights on every column, so any column out of place changes the scores.
    weights = rng.normal(0, 0.05, 48).tolist()
    write_linear_model(registry_dir, 2, weights=weights, bias=-1.0)
    client = make_client()
    session = ort.InferenceSession(str(registry_dir / "ranker" / "2" / "model.onnx"))
    metas = {
        item_id: ItemMeta(item_id, CATEGORIES[n % 3], NOW_MS - (60_000 if n >= 55 else 30 * 86_400_000), 20_000)
        for n, item_id in enumerate(ITEMS)
    }
    for n in range(12):
        user_id = f"parity-{seed}-{n}"
        user: dict[str, Any] | None = None
        if n % 4:
            user = {
                "user_clicks_1h": int(rng.integers(0, 9)),
                "user_ctr_24h": float(rng.random()) if n % 3 else None,
                "user_watch_seconds_24h": float(rng.gamma(2, 50)),
                "user_last_item_ids": [str(i) for i in rng.choice(ITEMS, 5, replace=False)],
                "user_affinity_categories": ["sport", "news"],
                "user_affinity_scores": [float(rng.random()), float(rng.random())],
                "user_seconds_since_last_event": int(rng.integers(0, 3600)),
            }
            store.users[user_id] = FeatureRow(USER_VIEW, user_id, user, NOW_MS - 1000)
        candidates = [str(c) for c in rng.choice(ITEMS + ["not-in-store", "not-anywhere"], 30, replace=False)]
        candidates += candidates[:3]  # duplicates are dropped, first occurrence kept
        k = int(rng.integers(5, 25))
        # POST /v1/rank (FastAPI's route) and GET /v1/feed on the user's cached list (FeedFastPath).
        store.lists[user_key(user_id)] = candidates
        for response in (
            client.post("/v1/rank", json={"user_id": user_id, "candidates": candidates, "k": k}),
            client.get(f"/v1/feed/{user_id}?k={k}"),
        ):
            assert response.status_code == 200
            body = response.json()
            RankResponse.model_validate(body)  # the documented response model, though written without it
            assert body["model"] == {"name": "ranker", "version": 2}
            unique = list(dict.fromkeys(candidates))
            expected = reference_answer(body, user, store, metas, session, unique, k)
            served = [(i["item_id"], i["score"], i["explored"]) for i in body["items"]]
            assert [(item, explored) for item, _, explored in served] == [(item, e) for item, _, e in expected]
            np.testing.assert_allclose([s for _, s, _ in served], [s for _, s, _ in expected], rtol=1e-6, atol=1e-7)
            assert [i["position"] for i in body["items"]] == list(range(len(served)))
