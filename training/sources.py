"""Where training data comes from: a generated synthetic world, an event log (files or topic), or MovieLens.

Each source gives the events in log order, the item catalog as `ItemMeta`, and, for
the synthetic world only, the generator's true engagement probabilities per impression.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from features.events import InteractionEvent
from features.ranking import ItemMeta
from simulator.catalog import read_catalog
from simulator.errors import CatalogError
from training.errors import SourceError
from training.eventlog import ReadStats, read_events, read_topic

# A fixed default start keeps generated worlds (and README figures) reproducible.
DEFAULT_SYNTHETIC_START_MS: Final = 1_780_000_000_000  # 2026-05-28T20:26:40Z


@dataclass(frozen=True)
class GroundTruth:
    """The synthetic world's probabilities for each impression event id."""

    event_ids: npt.NDArray[np.object_]
    engaged_relevance: npt.NDArray[np.float64]
    """P(engaged | examined): position-free, what an ideal ranker would sort by."""
    p_engaged: npt.NDArray[np.float64]
    """P(engaged | impression at its logged position): the Bayes-optimal prediction of the label."""

    def lookup(self, event_ids: npt.NDArray[np.object_]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(engaged_relevance, p_engaged) for the given impression ids; NaN where unknown."""
        index = {event_id: row for row, event_id in enumerate(self.event_ids.tolist())}
        rows = np.array([index.get(event_id, -1) for event_id in event_ids.tolist()], dtype=np.int64)
        known = rows >= 0
        relevance = np.where(known, self.engaged_relevance[np.maximum(rows, 0)], np.nan)
        p_engaged = np.where(known, self.p_engaged[np.maximum(rows, 0)], np.nan)
        return relevance, p_engaged


@dataclass(frozen=True)
class EventSource:
    name: str
    events: list[InteractionEvent]
    catalog: dict[str, ItemMeta]
    truth: GroundTruth | None = None
    rejected: int = 0
    """Records skipped as undecodable or invalid."""


def synthetic_source(
    *,
    users: int = 3000,
    items: int = 1000,
    seconds: float = 3 * 3600.0,
    rate: float = 20.0,
    seed: int = 0,
    new_items_per_minute: float = 1.0,
    start_ms: int = DEFAULT_SYNTHETIC_START_MS,
    progress: Callable[[int], None] | None = None,
) -> EventSource:
    """Generate a synthetic world (simulator/) in memory, with its ground truth."""
    from simulator.config import WorldConfig
    from simulator.world import SyntheticWorld

    world = SyntheticWorld(
        WorldConfig(
            start_ms=start_ms,
            users=users,
            items=items,
            seconds=seconds,
            rate=rate,
            seed=seed,
            new_items_per_minute=new_items_per_minute,
        )
    )
    events: list[InteractionEvent] = []
    for event in world.events():
        events.append(event)
        if progress is not None and len(events) % 5000 == 0:
            progress(len(events))
    catalog = {item.item_id: item.meta for item in world.catalog()}
    table = world.ground_truth_table()
    truth = GroundTruth(
        event_ids=np.asarray(table["event_id"].to_pylist(), dtype=object),
        engaged_relevance=table["engaged_relevance"].to_numpy(),
        p_engaged=table["p_engaged"].to_numpy(),
    )
    return EventSource(f"synthetic(seed={seed})", events, catalog, truth)


def catalog_by_id(path: Path) -> dict[str, ItemMeta]:
    """item_id -> ItemMeta from a catalog parquet (simulator.catalog.read_catalog), a SourceError if unreadable."""
    try:
        return {meta.item_id: meta for meta in read_catalog(path)}
    except CatalogError as error:
        raise SourceError(str(error)) from None


def log_source(
    *,
    events_path: Path | None = None,
    topic: str | None = None,
    bootstrap_servers: str | None = None,
    catalog_path: Path | None = None,
) -> EventSource:
    """An event log from a parquet/Avro file or the whole Kafka topic, plus an optional catalog parquet."""
    stats = ReadStats()
    if events_path is not None:
        events = list(read_events(events_path, stats))
        name = str(events_path)
    elif topic is not None and bootstrap_servers is not None:
        events = list(read_topic(bootstrap_servers, topic, stats))
        name = f"{bootstrap_servers}/{topic}"
    else:
        raise SourceError("give an event file (--events) or a topic and bootstrap servers")
    catalog = catalog_by_id(catalog_path) if catalog_path is not None else {}
    return EventSource(name, events, catalog, None, stats.rejected)
