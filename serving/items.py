"""What the API knows about items without asking anything on the request path.

`Catalog`: batch item metadata (category, created_ms, duration_ms) from the
catalog parquet (read by `simulator.catalog.read_catalog`), reloaded when the file changes.

`ItemFeatureCache`: the items' live features, refreshed in the background from
the online store (items may be up to an hour stale by contract). It holds them
already laid out as the ranker's item columns, built by `features.ranking.item_columns`
(the function `feature_matrix` uses), so a request only gathers rows: the matrix stays the training code's,
and 500 items cost a numpy gather instead of 500 dict walks (~5 ms). Each snapshot also
holds its items' catalog rows, so a request looks a candidate up once, not once per table.

Neither class ever blocks a request on I/O: requests read an immutable snapshot
that the refresh task replaces whole.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from feature_repo.layout import FeatureRow
from features.ranking import (
    ITEM_RANKER_FEATURES,
    RANKER_FEATURES,
    CatalogColumns,
    ItemMeta,
    declared_columns,
    item_columns,
)
from sdk.clock import wall_clock_ms
from serving.metrics import ServingMetrics
from serving.online_store import InMemoryOnlineStore, OnlineStoreError, RedisOnlineReader
from simulator.catalog import read_catalog

log = logging.getLogger("freshrank.serving.items")

ITEM_COLUMNS = np.array([RANKER_FEATURES.index(name) for name in ITEM_RANKER_FEATURES], dtype=np.intp)
CATALOG_FALLBACK_SIZE = 500
# Bounds on what request-supplied ids can make the cache hold or read. Candidate ids come from
# clients: a flood of random ids must cost neither memory nor Redis load without limit.
PENDING_MAX = 5_000
"""Missed items queued for a quick read; further misses wait for room (counted, answers say `partial`)."""
PENDING_READ_BATCH = 500
"""Items read per quick read (one pipeline); with the 50 ms gather that is at most ~10k HMGETs/s."""
ABSENT_MAX = 100_000
"""Items known to have no row (not read again until the next full refresh); least recently missed go first."""


def _rows_of(index: dict[str, int], item_ids: Sequence[str]) -> npt.NDArray[np.intp]:
    """`index[id]` for each id, -1 when absent."""
    n = len(item_ids)
    # map over dict.get with a repeated default: the loop stays in C (~25 % faster than a listcomp).
    return np.fromiter(map(index.get, item_ids, itertools.repeat(-1, n)), dtype=np.intp, count=n)


class Catalog:
    """Item metadata by id, from `catalog_path`; an absent or unreadable file is an empty catalog."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._metas: dict[str, ItemMeta] = {}
        self._newest: list[str] = []
        # Swapped as one tuple: a reload runs in a worker thread while requests read it.
        self._table: tuple[dict[str, int], CatalogColumns] = ({}, CatalogColumns.of([]))
        self._stamp: tuple[int, int] | None = None
        self.error: str | None = None

    def __len__(self) -> int:
        return len(self._metas)

    def get(self, item_id: str) -> ItemMeta | None:
        return self._metas.get(item_id)

    def ids(self) -> list[str]:
        return list(self._metas)

    def newest(self) -> list[str]:
        """The newest items, newest first: the last candidate fallback when no list exists."""
        return self._newest

    @property
    def table(self) -> tuple[dict[str, int], CatalogColumns]:
        """The current (id -> row, columns) pair; replaced whole by a reload, so its identity is its version."""
        return self._table

    def aligned(self, item_ids: Sequence[str]) -> CatalogColumns:
        """The catalog columns of these items, in this order (unknown items read as no `ItemMeta`)."""
        index, columns = self._table
        return columns.take(_rows_of(index, item_ids))

    def load(self, metas: Sequence[ItemMeta]) -> None:
        self._metas = {meta.item_id: meta for meta in metas}
        dated = sorted((m for m in metas if m.created_ms is not None), key=lambda m: m.created_ms or 0, reverse=True)
        self._newest = [m.item_id for m in dated[:CATALOG_FALLBACK_SIZE]]
        unique = list(self._metas.values())
        self._table = ({meta.item_id: n for n, meta in enumerate(unique)}, CatalogColumns.of(unique))

    def reload_if_changed(self) -> bool:
        """Re-read the parquet if its size or mtime changed (blocking: call from a worker thread)."""
        try:
            stat = self.path.stat()
        except OSError:
            return False
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return False
        try:
            metas = read_catalog(self.path)
        except Exception as error:  # CatalogError, or whatever else pyarrow raises for a torn or foreign file
            self.error = f"{self.path}: {error}"
            log.warning("catalog not reloaded: %s", self.error)
            return False
        self.load(metas)
        self._stamp = stamp
        self.error = None
        log.info("catalog loaded: %d items from %s", len(self._metas), self.path)
        return True


@dataclass(frozen=True)
class ItemSnapshot:
    """Immutable item rows: `block[index[id]]` are the item's ranker columns, `as_of_ms` when they hold."""

    index: dict[str, int]
    block: npt.NDArray[np.float32]
    as_of_ms: npt.NDArray[np.float64]
    refreshed_ms: int | None
    catalog_rows: npt.NDArray[np.intp] | None = None
    """Each cached item's row in `catalog_table`'s columns (-1: not in the catalog), found at refresh time so
    a request looks each candidate up once (here) instead of twice (here and in the catalog)."""
    catalog_table: tuple[dict[str, int], CatalogColumns] | None = None
    """The `Catalog.table` those rows index; after a catalog reload they are not used (until the next refresh)."""
    declared_names: tuple[str, ...] = ()
    """Declared item features (`"<view>:<feature>"`) in `block`'s columns after the ranker's item columns."""

    def with_catalog(self, catalog: Catalog) -> ItemSnapshot:
        table = catalog.table
        rows = np.full(len(self.block), -1, dtype=np.intp)
        if self.index:
            rows[np.fromiter(self.index.values(), dtype=np.intp, count=len(self.index))] = _rows_of(
                table[0], list(self.index)
            )
        return replace(self, catalog_rows=rows, catalog_table=table)

    @staticmethod
    def empty(declared_names: tuple[str, ...] = ()) -> ItemSnapshot:
        width = len(ITEM_COLUMNS) + len(declared_names)
        return ItemSnapshot({}, np.empty((0, width), np.float32), np.empty(0), None, declared_names=declared_names)

    @staticmethod
    def build(rows: dict[str, FeatureRow], refreshed_ms: int, declared_names: tuple[str, ...] = ()) -> ItemSnapshot:
        ids = list(rows)
        values = [rows[i].values for i in ids]
        block = item_columns(values).astype(np.float32)
        if declared_names:
            block = np.hstack([block, declared_columns(values, declared_names)])
        as_of = np.array([np.nan if rows[i].as_of_ms is None else rows[i].as_of_ms for i in ids], dtype=np.float64)
        index = {item_id: n for n, item_id in enumerate(ids)}
        return ItemSnapshot(index, block, as_of, refreshed_ms, declared_names=declared_names)

    def merged(self, rows: dict[str, FeatureRow]) -> ItemSnapshot:
        """This snapshot plus (or with newer) `rows`; keeps `refreshed_ms` (a partial read is not a refresh)."""
        if not rows:
            return self
        update = ItemSnapshot.build(rows, self.refreshed_ms or wall_clock_ms(), self.declared_names)
        index = dict(self.index)
        block = self.block
        as_of = self.as_of_ms
        new_ids = [item_id for item_id in update.index if item_id not in index]
        old_ids = [item_id for item_id in update.index if item_id in index]
        if old_ids:
            block = block.copy()
            as_of = as_of.copy()
            targets = [index[i] for i in old_ids]
            sources = [update.index[i] for i in old_ids]
            block[targets] = update.block[sources]
            as_of[targets] = update.as_of_ms[sources]
        catalog_rows = self.catalog_rows
        if new_ids:
            sources = [update.index[i] for i in new_ids]
            for offset, item_id in enumerate(new_ids):
                index[item_id] = len(block) + offset
            block = np.concatenate([block, update.block[sources]])
            as_of = np.concatenate([as_of, update.as_of_ms[sources]])
            if catalog_rows is not None and self.catalog_table is not None:
                # Only the new items are looked up: a quick read must not cost a pass over the whole cache.
                catalog_rows = np.concatenate([catalog_rows, _rows_of(self.catalog_table[0], new_ids)])
        return ItemSnapshot(
            index, block, as_of, self.refreshed_ms, catalog_rows, self.catalog_table, self.declared_names
        )


@dataclass(frozen=True)
class ItemLookup:
    """The cached rows of one request's candidates; `rows[i] == -1` when candidate i is not cached."""

    rows: npt.NDArray[np.intp]
    snapshot: ItemSnapshot
    not_yet_read: int = 0
    """Candidates the cache has not read yet (not counting items known to have no row in the store)."""
    missing: bool = False
    """Some candidate is not cached (`rows` holds a -1)."""

    def item_block(self) -> npt.NDArray[np.float32]:
        """(n, ranker item columns + declared item features): one row per candidate, NaN where not cached."""
        block = self.snapshot.block
        if not len(block):
            return np.full((len(self.rows), block.shape[1]), np.nan, dtype=np.float32)
        # One gather; a -1 row read the last cached item and is blanked after (cheaper than a masked gather).
        out = block[self.rows]
        if self.missing:
            out[self.rows < 0] = np.nan
        return out

    def catalog(self, catalog: Catalog, item_ids: Sequence[str]) -> CatalogColumns:
        """`catalog.aligned(item_ids)` (the ids this lookup was made for), from the rows the snapshot
        found at refresh time when it was built against this catalog and holds every candidate."""
        snapshot = self.snapshot
        index, columns = catalog.table
        if snapshot.catalog_table is not catalog.table or snapshot.catalog_rows is None or self.missing:
            return columns.take(_rows_of(index, item_ids))
        return columns.take(snapshot.catalog_rows[self.rows])

    def oldest_as_of_ms(self) -> float | None:
        hit = self.rows[self.rows >= 0] if self.missing else self.rows
        if not len(hit):
            return None
        oldest = np.fmin.reduce(self.snapshot.as_of_ms[hit])  # fmin skips NaN (unknown as-of)
        return None if np.isnan(oldest) else float(oldest)


class ItemFeatureCache:
    """Items' features in process: full refresh every `refresh_s`, and a quick read of items a request missed."""

    def __init__(
        self,
        store: RedisOnlineReader | InMemoryOnlineStore,
        catalog: Catalog,
        metrics: ServingMetrics,
        refresh_s: float,
        max_items: int,
        clock_ms: Callable[[], int] = wall_clock_ms,
        declared_names: Sequence[str] = (),
    ) -> None:
        """`declared_names`: declared item features (`"<view>:<feature>"`) to hold beside the ranker's columns."""
        self.store = store
        self.catalog = catalog
        self.metrics = metrics
        self.refresh_s = refresh_s
        self.max_items = max_items
        self.clock_ms = clock_ms
        self.declared_names = tuple(declared_names)
        self.declared_columns = {name: column for column, name in enumerate(self.declared_names)}
        """Column of each declared item feature in a lookup's `item_block`, after the ranker's item columns."""
        self.snapshot = ItemSnapshot.empty(self.declared_names)
        self.popular: list[str] = []
        # Items requests asked for that exist in the store, most recent last; bounded by max_items.
        self._interest: OrderedDict[str, None] = OrderedDict()
        # Insertion-ordered dicts as bounded sets: oldest first, so the bound drops the oldest.
        self._pending: dict[str, None] = {}
        self._absent: OrderedDict[str, None] = OrderedDict()
        self._wake = asyncio.Event()
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self.last_error: str | None = None

    def lookup(self, item_ids: Sequence[str]) -> ItemLookup:
        snapshot = self.snapshot
        n = len(item_ids)
        rows = np.fromiter(map(snapshot.index.get, item_ids, itertools.repeat(-1, n)), dtype=np.intp, count=n)
        not_yet_read = 0
        missing = bool((rows < 0).any())
        if missing:
            not_yet_read = self._want([item_ids[i] for i in np.flatnonzero(rows < 0)])
        return ItemLookup(rows, snapshot, not_yet_read, missing)

    def note_interest(self, item_ids: Sequence[str]) -> None:
        """Keep these items in future refreshes (candidates served from Redis lists)."""
        interest = self._interest
        for item_id in item_ids:
            if item_id in interest:
                interest.move_to_end(item_id)
            else:
                interest[item_id] = None
        while len(interest) > self.max_items:
            interest.popitem(last=False)

    def _want(self, missing: list[str]) -> int:
        """Queue a quick read of the missing items; returns how many were not known to be absent.

        Only items found by that read join the refreshed set (`note_interest`), so ids that exist
        nowhere cost one read each and then sit in the bounded `_absent` memo.
        """
        absent, pending = self._absent, self._pending
        unread = [item_id for item_id in missing if item_id not in absent]
        room = PENDING_MAX - len(pending)
        queued = 0
        for item_id in unread:
            if item_id in pending:
                continue
            if queued >= room:
                self.metrics.item_cache_misses_dropped.inc(len(unread) - queued)
                break
            pending[item_id] = None
            queued += 1
        if queued:
            self._wake.set()
        return len(unread)

    def _mark_absent(self, item_ids: Sequence[str]) -> None:
        absent = self._absent
        for item_id in item_ids:
            absent[item_id] = None
            absent.move_to_end(item_id)
        while len(absent) > ABSENT_MAX:
            absent.popitem(last=False)

    def refresh_age_s(self) -> float | None:
        refreshed = self.snapshot.refreshed_ms
        return None if refreshed is None else (self.clock_ms() - refreshed) / 1000

    def wanted_ids(self) -> list[str]:
        ordered: dict[str, None] = {}
        for source in (self.popular, reversed(self._interest), self.catalog.ids()):
            for item_id in source:
                ordered[item_id] = None
                if len(ordered) >= self.max_items:
                    return list(ordered)
        return list(ordered)

    def _failed(self, error: OnlineStoreError) -> None:
        self.last_error = str(error)
        # Back off: a down store must not cost a read attempt (and its CPU) per request.
        self._backoff_s = min(max(0.5, 2 * self._backoff_s), self.refresh_s)
        self._retry_at = time.monotonic() + self._backoff_s

    async def refresh(self) -> bool:
        """Read every wanted item now and replace the snapshot; False (snapshot kept) if the store failed."""
        ids = self.wanted_ids()
        started = self.clock_ms()
        try:
            rows = await self.store.item_rows(ids)
        except OnlineStoreError as error:
            self._failed(error)
            self.metrics.item_cache_refreshes.labels("failed").inc()
            log.warning("item features not refreshed: %s", error)
            return False
        self.snapshot = ItemSnapshot.build(rows, started, self.declared_names).with_catalog(self.catalog)
        self._absent = OrderedDict()
        self._mark_absent([item_id for item_id in ids if item_id not in rows])
        for item_id in ids:
            self._pending.pop(item_id, None)
        self.last_error = None
        self._backoff_s = 0.0
        self.metrics.item_cache_refreshes.labels("ok").inc()
        self.metrics.item_cache_items.set(len(rows))
        return True

    async def read_pending(self) -> None:
        pending = list(itertools.islice(self._pending, PENDING_READ_BATCH))
        try:
            rows = await self.store.item_rows(pending)
        except OnlineStoreError as error:
            self._failed(error)  # they stay queued: read again once the back-off is over
            return
        for item_id in pending:
            self._pending.pop(item_id, None)
        self._backoff_s = 0.0
        self._mark_absent([item_id for item_id in pending if item_id not in rows])
        self.note_interest(list(rows))
        self.snapshot = self.snapshot.merged(rows)
        self.metrics.item_cache_items.set(len(self.snapshot.index))

    async def run(self) -> None:
        """Background loop: full refreshes on a timer, quick reads of missed items in between.

        Never ends on an error: a failing step is logged, counted
        (`freshrank_serve_item_cache_refreshes_total{outcome="error"}`) and retried after a back-off,
        so one bad value cannot leave the pod serving stale features forever.
        """
        next_full = 0.0
        while True:
            try:
                next_full = await self._step(next_full)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.exception("item-feature refresh step failed; retrying")
                self.metrics.item_cache_refreshes.labels("error").inc()
                self.last_error = f"{type(error).__name__}: {error}"
                self._backoff_s = min(max(0.5, 2 * self._backoff_s), self.refresh_s)
                self._retry_at = time.monotonic() + self._backoff_s
                next_full = min(next_full, self._retry_at)
                await asyncio.sleep(self._backoff_s)

    async def _step(self, next_full: float) -> float:
        """One turn of the loop; returns when the next full refresh is due."""
        now = time.monotonic()
        if now >= next_full:
            ok = await self.refresh()
            return time.monotonic() + (self.refresh_s if ok else self._backoff_s)
        if self._pending and now >= self._retry_at:
            await asyncio.sleep(0.05)  # gather a few requests' misses into one read
            await self.read_pending()
            return next_full
        self._wake.clear()
        if self._pending:  # backing off after a failure: requests' wake-ups must not spin the loop
            await asyncio.sleep(max(0.0, min(next_full, self._retry_at) - now))
            return next_full
        # asyncio.timeout, not wait_for: in Python 3.11 wait_for swallows a cancel that arrives as the
        # wake-up completes, and this loop would then outlive the app's shutdown.
        try:
            async with asyncio.timeout(max(0.0, next_full - now)):
                await self._wake.wait()
        except TimeoutError:
            pass
        return next_full
