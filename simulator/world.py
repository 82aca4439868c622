"""A synthetic feed world whose engagement probabilities are known.

Users with drifting category interests are shown ranked slates drawn from a
catalog that keeps growing; what they do with each shown item is drawn from
probabilities `simulator.behaviour` computes and the world records, so a ranker
trained on the event log can be compared with the oracle ranking.

The world is drawn once (`simulator.population`); `events()` plays the span out
(`simulator.run`). Pure: no I/O, no wall clock, no global random state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from features.events import MAX_ID_LENGTH, InteractionEvent
from simulator.catalog import CatalogItem
from simulator.config import WorldConfig
from simulator.population import draw_items, draw_users
from simulator.run import KINDS, Run
from simulator.truth import TRUTH_FIELDS, TRUTH_SCHEMA, ImpressionTruth


class SyntheticWorld:
    """Users, a growing catalog and a simulated feed; `events()` plays the span out."""

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        seeds = np.random.SeedSequence(config.seed).spawn(3)
        self._run_seeds = (seeds[1], seeds[2])
        rng = np.random.default_rng(seeds[0])
        self._items = draw_items(rng, config)
        self._users = draw_users(rng, config)
        if max(len(self._items.ids[-1]), len(self._users.ids[-1])) > MAX_ID_LENGTH:
            raise ValueError("too many users or items for the id format")
        self._truth_chunks: list[dict[str, Any]] = []
        self._truth_cache: list[ImpressionTruth] | None = None

    def catalog(self) -> list[CatalogItem]:
        """Every item that exists by the end of the span, in creation order."""
        items = self._items
        created = items.created.tolist()
        category = items.category.tolist()
        creator = items.creator.tolist()
        quality = items.quality.tolist()
        duration = items.duration.tolist()
        return [
            CatalogItem(
                item_id=items.ids[i],
                category=items.category_names[category[i]],
                creator_id=items.creator_ids[creator[i]],
                quality=quality[i],
                created_ms=created[i],
                duration_ms=duration[i],
            )
            for i in range(len(created))
        ]

    def events(self) -> Iterator[InteractionEvent]:
        """Yield the span's events in non-decreasing event time, lazily.

        Each call replays the world from the start (same events again) and
        restarts the ground truth, which holds a record for every impression
        yielded so far (and possibly a few generated just ahead of them).
        """
        self._truth_chunks = []
        self._truth_cache = None
        run = Run(self.config, self._items, self._users, self._run_seeds, self._record_truth)
        user_ids, item_ids = self._users.ids, self._items.ids
        devices, countries = self._users.device, self._users.country
        kinds = KINDS
        for batch in run.batches():
            for event_id, user, item, kind, time, watch, request_id, position in zip(
                batch.event_id.tolist(),
                batch.user.tolist(),
                batch.item.tolist(),
                batch.kind.tolist(),
                batch.time.tolist(),
                batch.watch.tolist(),
                batch.request_id.tolist(),
                batch.position.tolist(),
                strict=True,
            ):
                yield InteractionEvent(
                    event_id,
                    user_ids[user],
                    item_ids[item],
                    kinds[kind],
                    time,
                    None if watch < 0 else watch,
                    request_id,
                    position,
                    None,
                    devices[user],
                    countries[user],
                )

    @property
    def ground_truth(self) -> list[ImpressionTruth]:
        """One record per impression generated so far by the latest `events()` run."""
        if self._truth_cache is None:
            table = self.ground_truth_table()
            self._truth_cache = [ImpressionTruth(**row) for row in table.to_pylist()]
        return self._truth_cache

    def ground_truth_table(self) -> Any:
        """The ground truth as a pyarrow Table (TRUTH_SCHEMA), without building a Python object per row."""
        columns: dict[str, Any] = {}
        for name, _ in TRUTH_FIELDS:
            parts = [chunk[name] for chunk in self._truth_chunks]
            columns[name] = np.concatenate(parts) if parts else []
        if self._truth_chunks:
            # Chunks hold indices; spell the ids once for the whole table.
            columns["user_id"] = np.asarray(self._users.ids, dtype=object)[columns["user_id"]]
            columns["item_id"] = np.asarray(self._items.ids, dtype=object)[columns["item_id"]]
        return pa.table(columns, schema=TRUTH_SCHEMA)

    def _record_truth(self, chunk: dict[str, Any]) -> None:
        if self.config.record_ground_truth:
            self._truth_chunks.append(chunk)
            self._truth_cache = None
