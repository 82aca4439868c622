"""One ranking request, stage by stage; every missing or slow part degrades the answer, none fails it.

    candidates   request list, else the user's cached list (Redis, deadline), else
                 popular in the user's country, else global popular (both held in
                 process), else the newest catalog items
    user         the user's live feature row (online store, one entity, deadline), in
                 the same round trip as the cached-candidates read (`feed_reads`)
    items        the candidates' feature rows from the in-process cache
    matrix       `features.ranking.feature_matrix_columns` in the model's column order
    score        the arm's ONNX model (fallback: smoothed CTR)
    policies     seen filter, exploration slots, diversity -> top k

Each stage's time goes to `freshrank_serve_stage_seconds{stage}`; each fallback
that fires is named in the response's `degraded` list as `stage:reason` and counted
in `freshrank_serve_fallbacks_total{reason}`. Exceptions from a stage's
dependencies are caught here and turned into a fallback; a bug elsewhere still
surfaces as a 500 (tests assert there are none).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from feature_repo.layout import FeatureRow
from features.candidates import popular_global_key, user_key
from features.definitions import CTR_PRIOR_ALPHA, CTR_PRIOR_BETA, FeatureValue
from features.ranking import ITEM_RANKER_FEATURES, CatalogColumns, feature_matrix_columns
from sdk.clock import wall_clock_ms
from serving.experiments import Experiments
from serving.items import Catalog, ItemFeatureCache
from serving.metrics import ServingMetrics
from serving.models import LoadedModel, ModelRegistry
from serving.online_store import CorruptRow, InMemoryOnlineStore, OnlineStoreError, RedisOnlineReader
from serving.policies import FloatArray, PolicyConfig, Slot, choose_slate, fallback_scores
from serving.settings import ServingSettings

log = logging.getLogger("freshrank.serving.pipeline")
T = TypeVar("T")

_N_ITEM = len(ITEM_RANKER_FEATURES)
_SMOOTHED_CTR = ITEM_RANKER_FEATURES.index("item_smoothed_ctr_24h")
_CLICKS = ITEM_RANKER_FEATURES.index("item_clicks_24h")
_IMPRESSIONS = ITEM_RANKER_FEATURES.index("item_impressions_24h")
PRIOR_MEAN_CTR = CTR_PRIOR_ALPHA / (CTR_PRIOR_ALPHA + CTR_PRIOR_BETA)


@dataclass(frozen=True)
class RankQuery:
    user_id: str
    k: int
    candidates: Sequence[str] | None = None
    country: str | None = None
    device: str | None = None


@dataclass(frozen=True, slots=True)
class RankedItem:
    item_id: str
    score: float
    position: int
    explored: bool


@dataclass
class RankResult:
    request_id: str
    user_id: str
    arm: str
    model_name: str | None
    model_version: int | None
    candidate_source: str
    items: list[RankedItem]
    degraded: list[str] = field(default_factory=list)


class Breaker:
    """Skip the online store for `open_s` once it looks down, so no request pays a deadline for nothing.

    Down = `failures` consecutive failed reads and no successful one for `quiet_s`. The second
    condition keeps an overloaded process (some reads late, others fine) from shedding every read.
    """

    def __init__(self, failures: int, open_s: float, quiet_s: float = 0.25) -> None:
        self.failures = failures
        self.open_s = open_s
        self.quiet_s = quiet_s
        self._consecutive = 0
        self._open_until = 0.0
        self._last_success = time.monotonic()

    def allow(self) -> bool:
        return time.monotonic() >= self._open_until

    def success(self) -> None:
        self._consecutive = 0
        self._last_success = time.monotonic()

    def failure(self) -> None:
        self._consecutive += 1
        now = time.monotonic()
        if self._consecutive >= self.failures and now - self._last_success >= self.quiet_s:
            self._open_until = now + self.open_s
            self._consecutive = 0


class PopularLists:
    """The fallback candidate lists, held in process and refreshed in the background."""

    def __init__(self) -> None:
        self.global_list: list[str] = []
        self.by_country: dict[str, list[str]] = {}
        self.refreshed_ms: int | None = None

    async def refresh(self, store: RedisOnlineReader | InMemoryOnlineStore) -> None:
        global_list = await store.candidate_list(popular_global_key())
        by_country = await store.country_popular_lists()
        self.global_list = global_list or []
        self.by_country = by_country
        self.refreshed_ms = wall_clock_ms()


def _dedupe(ids: Sequence[str], limit: int) -> list[str]:
    return list(dict.fromkeys(ids))[:limit]


class FeedRanker:
    def __init__(
        self,
        settings: ServingSettings,
        store: RedisOnlineReader | InMemoryOnlineStore,
        items: ItemFeatureCache,
        catalog: Catalog,
        registry: ModelRegistry,
        experiments: Experiments,
        metrics: ServingMetrics,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.settings = settings
        self.store = store
        self.items = items
        self.catalog = catalog
        self.registry = registry
        self.experiments = experiments
        self.metrics = metrics
        self.clock_ms = clock_ms
        self.popular = PopularLists()
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_open_ms / 1000)
        self.policy = PolicyConfig(
            exploration_share=settings.exploration_share,
            max_run=settings.max_run_per_category,
            prior_alpha=CTR_PRIOR_ALPHA,
            prior_beta=CTR_PRIOR_BETA,
        )
        self._stage = metrics.stage_seconds
        self._stages = {
            name: self._stage.labels(name)
            for name in ("candidates", "user_features", "item_features", "matrix", "score", "policies", "total")
        }

    # --- stages ---------------------------------------------------------------

    async def _guarded(
        self, stages: tuple[str, ...], call: Awaitable[T], deadline_ms: float, degraded: list[str]
    ) -> T | None:
        """Await an online-store read under its deadline and the breaker; None (and a reason per stage) if it failed.

        `stages` are the request stages the read serves (one round trip may serve two): each gets the
        reason and the read's time in its stage histogram.
        """
        if not self.breaker.allow():
            degraded.extend(f"{stage}:store_unavailable" for stage in stages)
            if asyncio.iscoroutine(call):
                call.close()
            return None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(deadline_ms / 1000):  # no extra task, unlike wait_for
                result = await call
        except TimeoutError:
            degraded.extend(f"{stage}:deadline" for stage in stages)
            self.breaker.failure()
            return None
        except CorruptRow as error:
            # The store answered; the stored value is bad. Degrade this answer, keep the breaker closed.
            log.debug("%s: %s", stages, error)
            degraded.extend(f"{stage}:corrupt" for stage in stages)
            return None
        except OnlineStoreError as error:
            log.debug("%s read failed: %s", stages, error)
            degraded.extend(f"{stage}:store_unavailable" for stage in stages)
            self.breaker.failure()
            return None
        except Exception:
            # Anything else from a read (a decoder bug, a client library surprise) degrades this
            # answer too: no stored value may turn a request into a 500.
            log.exception("%s read failed unexpectedly", stages)
            degraded.extend(f"{stage}:error" for stage in stages)
            return None
        finally:
            elapsed = time.perf_counter() - started
            for stage in stages:
                self._stages[stage].observe(elapsed)
        self.breaker.success()
        return result

    async def _read_user_and_list(
        self, query: RankQuery, degraded: list[str]
    ) -> tuple[list[str] | None, FeatureRow | None]:
        """The cached list and the user row in one round trip, under the tighter of the two deadlines."""
        reads = await self._guarded(
            ("candidates", "user_features"),
            self.store.feed_reads(query.user_id, user_key(query.user_id)),
            min(self.settings.candidates_deadline_ms, self.settings.user_features_deadline_ms),
            degraded,
        )
        if reads is None:
            return None, None
        for stage, error in (("candidates", reads.candidates_error), ("user_features", reads.user_error)):
            if error is not None:
                log.debug("%s: %s", stage, error)
                degraded.append(f"{stage}:corrupt")
        return reads.candidates, reads.user

    def _candidates(self, query: RankQuery, cached: list[str] | None, degraded: list[str]) -> tuple[list[str], str]:
        """The request's list, else the user's cached list (read by the caller), else the fallback hierarchy."""
        limit = self.settings.max_candidates
        if query.candidates is not None:
            return _dedupe(query.candidates, limit), "request"
        if cached:
            # Items the cache has not read yet are queued by the lookup that follows.
            return _dedupe(cached, limit), "user"
        fallbacks = (
            ("popular_country", self.popular.by_country.get(query.country or "", [])),
            ("popular_global", self.popular.global_list),
            ("catalog", self.catalog.newest()),
        )
        for source, ids in fallbacks:
            if ids:
                degraded.append(f"candidates:{source}")
                return _dedupe(ids, limit), source
        degraded.append("candidates:none")
        return [], "none"

    def _user_features(self, row: FeatureRow | None, degraded: list[str]) -> dict[str, FeatureValue | None] | None:
        if row is None:
            if not any(reason.startswith("user_features:") for reason in degraded):
                degraded.append("user_features:absent")
            return None
        if row.as_of_ms is not None:
            self.metrics.feature_age.labels("user").observe(max(0.0, (self.clock_ms() - row.as_of_ms) / 1000))
        return dict(row.values)

    def _model(self, arm_version: int | None, degraded: list[str]) -> LoadedModel | None:
        models = self.registry.models
        model = models.get(arm_version)
        if model is None and arm_version is not None:
            model = models.latest
            degraded.append("model:arm_version_unavailable")
        if model is None:
            degraded.append("model:missing")
        return model

    # --- the request ----------------------------------------------------------

    async def rank(self, query: RankQuery, request_id: str | None = None) -> RankResult:
        started = time.perf_counter()
        request_id = request_id or uuid.uuid4().hex
        now_ms = self.clock_ms()
        degraded: list[str] = []
        arm = self.experiments.assigner.assign(query.user_id)

        if query.candidates is None:
            cached, user_row = await self._read_user_and_list(query, degraded)
            candidates, source = self._candidates(query, cached, degraded)
        else:
            t0 = time.perf_counter()
            candidates, source = self._candidates(query, None, degraded)
            self._stages["candidates"].observe(time.perf_counter() - t0)
            user_row = await self._guarded(
                ("user_features",),
                self.store.user_row(query.user_id),
                self.settings.user_features_deadline_ms,
                degraded,
            )
        user = self._user_features(user_row, degraded)

        t0 = time.perf_counter()
        lookup = self.items.lookup(candidates)
        item_block = lookup.item_block()
        refresh_age = self.items.refresh_age_s()
        if refresh_age is None:
            degraded.append("item_features:unavailable")
        elif refresh_age > self.settings.item_max_age_s:
            degraded.append("item_features:stale")
        if lookup.not_yet_read:
            # New to this process: read in the background within ~50 ms, missing (NaN) for now.
            degraded.append("item_features:partial")
        oldest = lookup.oldest_as_of_ms()
        if oldest is not None:
            self.metrics.feature_age.labels("item").observe(max(0.0, (now_ms - oldest) / 1000))
        catalog = lookup.catalog(self.catalog, candidates)
        t1 = time.perf_counter()
        self._stages["item_features"].observe(t1 - t0)

        # feature_matrix's own columns code, fed with columns: the item block from the cache (laid
        # out by feature_matrix at refresh time) and the catalog aligned to the candidates.
        ranker_items = item_block if item_block.shape[1] == _N_ITEM else item_block[:, :_N_ITEM]
        try:
            matrix = feature_matrix_columns(user, ranker_items, catalog, candidates, now_ms)
        except Exception:
            # A decodable user row with values of the wrong shape: rank as for a user without features.
            log.exception("feature matrix failed for user %r; ranking without user features", query.user_id[:128])
            degraded.append("user_features:unusable")
            user = None
            matrix = feature_matrix_columns(None, ranker_items, catalog, candidates, now_ms)
        model = self._model(arm.pinned_version, degraded)
        if model is not None and model.declared_inputs:
            matrix = np.hstack([matrix, self._declared_matrix(model.declared_inputs, user, item_block)])
        t2 = time.perf_counter()
        self._stages["matrix"].observe(t2 - t1)

        scores = self._score(model, matrix, item_block, degraded)
        t3 = time.perf_counter()
        self._stages["score"].observe(t3 - t2)

        slate = self._apply_policies(query, candidates, scores, catalog, user, item_block, now_ms, request_id, degraded)
        items = [
            RankedItem(candidates[slot.index], float(scores[slot.index]), position, slot.explored)
            for position, slot in enumerate(slate)
        ]
        self._stages["policies"].observe(time.perf_counter() - t3)
        self._stages["total"].observe(time.perf_counter() - started)
        for reason in degraded:
            self.metrics.fallbacks.labels(reason).inc()
        return RankResult(
            request_id=request_id,
            user_id=query.user_id,
            arm=arm.name,
            model_name=model.name if model else None,
            model_version=model.version if model else None,
            candidate_source=source,
            items=items,
            degraded=degraded,
        )

    def _declared_matrix(
        self,
        names: tuple[str, ...],
        user: dict[str, FeatureValue | None] | None,
        item_block: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.float32]:
        """The declared columns a model takes, in its order: an item feature from the cache's block (after the
        ranker's item columns), a user feature from the user's row (the same for every candidate); NaN when
        absent, as LightGBM learned for missing values."""
        out = np.full((len(item_block), len(names)), np.nan, dtype=np.float32)
        item_columns = self.items.declared_columns
        for column, name in enumerate(names):
            at = item_columns.get(name)
            if at is not None:
                out[:, column] = item_block[:, _N_ITEM + at]
            elif user is not None and isinstance(value := user.get(name), int | float):
                out[:, column] = value
        return out

    def _score(
        self,
        model: LoadedModel | None,
        matrix: npt.NDArray[np.float32],
        item_block: npt.NDArray[np.float32],
        degraded: list[str],
    ) -> FloatArray:
        if model is None or not len(matrix):
            return fallback_scores(item_block[:, _SMOOTHED_CTR].astype(np.float64), PRIOR_MEAN_CTR)
        try:
            scores = model.score(matrix)
        except Exception as error:  # onnxruntime errors have no common base we can import
            log.error("model v%d failed to score: %s", model.version, error)
            degraded.append("model:error")
            return fallback_scores(item_block[:, _SMOOTHED_CTR].astype(np.float64), PRIOR_MEAN_CTR)
        bad = ~np.isfinite(scores)
        if bad.any():
            degraded.append("model:nonfinite")
            fallback = fallback_scores(item_block[:, _SMOOTHED_CTR].astype(np.float64), PRIOR_MEAN_CTR)
            scores = np.where(bad, fallback, scores)
        return scores

    def _apply_policies(
        self,
        query: RankQuery,
        candidates: list[str],
        scores: FloatArray,
        catalog: CatalogColumns,
        user: dict[str, FeatureValue | None] | None,
        item_block: npt.NDArray[np.float32],
        now_ms: int,
        request_id: str,
        degraded: list[str],
    ) -> list[Slot]:
        n = len(candidates)
        last_items = user.get("user_last_item_ids") if user is not None and self.settings.filter_seen else None
        seen_ids = set(last_items) if isinstance(last_items, list) else set()
        # map over the set's __contains__: the loop stays in C (~36-40 us vs ~45 us for a listcomp of 500).
        seen = (
            np.fromiter(map(seen_ids.__contains__, candidates), dtype=bool, count=n)
            if seen_ids
            else np.zeros(n, dtype=bool)
        )
        with np.errstate(invalid="ignore"):  # unknown creation time (NaN) is not new
            explorable = catalog.created_ms[:n] >= now_ms - self.settings.new_item_max_age_s * 1000
        # fmax turns a missing count (NaN) into 0 in one ufunc.
        clicks = np.fmax(item_block[:, _CLICKS].astype(np.float64), 0.0)
        impressions = np.fmax(item_block[:, _IMPRESSIONS].astype(np.float64), 0.0)
        categories = catalog.category_names()
        # Seeded by the request id: the same request id reproduces the same exploration draws.
        rng = np.random.default_rng(zlib.crc32(request_id.encode()))
        try:
            slate = choose_slate(scores, categories, seen, explorable, clicks, impressions, query.k, self.policy, rng)
        except Exception:
            log.exception("policies failed; serving the pure score order")
            degraded.append("policies:error")
            slate = [Slot(int(i), explored=False) for i in np.argsort(-scores, kind="stable")[: query.k]]
        self.metrics.explored.inc(sum(slot.explored for slot in slate))
        return slate
