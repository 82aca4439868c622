"""Event log files: parquet and Avro container round trips; bad records are skipped and counted."""

from __future__ import annotations

from pathlib import Path

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq

from features.codec import SchemaRegistry, to_record
from features.events import EventType
from tests.factories import make_event
from training.eventlog import EVENT_SCHEMA, ReadStats, read_events, write_events

EVENTS = [
    make_event(event_id="a"),
    make_event(event_id="b", event_type=EventType.IMPRESSION, watch_ms=None, position=None, country=None),
]


def test_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    assert write_events(EVENTS, path) == 2
    assert list(read_events(path)) == EVENTS


def test_avro_container_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "events.avro"
    schema = fastavro.parse_schema(SchemaRegistry().latest().definition)
    with path.open("wb") as handle:
        fastavro.writer(handle, schema, [to_record(e) for e in EVENTS])
    assert list(read_events(path)) == EVENTS


def test_bad_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    rows = [to_record(e) for e in EVENTS] + [{**to_record(EVENTS[0]), "event_type": "teleport"}]
    pq.write_table(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA), path)
    stats = ReadStats()
    assert list(read_events(path, stats)) == EVENTS
    assert (stats.read, stats.rejected) == (3, 1)
