"""What the world knew about each impression: the probabilities behind it, for evaluation against an oracle."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from simulator.parquet import write_atomically


@dataclass(frozen=True, slots=True)
class ImpressionTruth:
    """The probabilities behind one impression event (same event_id), as the world drew them."""

    event_id: str
    request_id: str
    user_id: str
    item_id: str
    position: int
    event_time_ms: int
    p_examine: float
    """Probability that the user looked at this position (position bias only)."""
    p_click: float
    """P(click | impression) = p_examine * relevance."""
    p_engaged: float
    """P(engaged watch | impression): a complete, or watch_ms >= ENGAGED_WATCH_FRACTION * duration_ms."""
    relevance: float
    """P(click | examined): no position bias; sort by it for the oracle click ranking."""
    engaged_relevance: float
    """P(engaged watch | examined): no position bias; the oracle ranking for engagement."""


TRUTH_FIELDS: tuple[tuple[str, Any], ...] = (
    ("event_id", pa.string()),
    ("request_id", pa.string()),
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("position", pa.int32()),
    ("event_time_ms", pa.int64()),
    ("p_examine", pa.float64()),
    ("p_click", pa.float64()),
    ("p_engaged", pa.float64()),
    ("relevance", pa.float64()),
    ("engaged_relevance", pa.float64()),
)
TRUTH_SCHEMA = pa.schema(list(TRUTH_FIELDS))


def write_ground_truth(truths: Iterable[ImpressionTruth], path: Path) -> None:
    """Write impression ground truth as parquet (TRUTH_SCHEMA)."""
    rows = list(truths)
    columns = {name: [getattr(truth, name) for truth in rows] for name in TRUTH_SCHEMA.names}
    write_atomically(pa.table(columns, schema=TRUTH_SCHEMA), path)


def read_ground_truth(path: Path) -> list[ImpressionTruth]:
    table = pq.read_table(path, schema=TRUTH_SCHEMA)
    return [ImpressionTruth(**row) for row in table.to_pylist()]
