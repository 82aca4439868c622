"""Reading and writing event logs for training: parquet, Avro container files, or the Kafka topic itself.

Every reader yields `InteractionEvent`s in log order per user (the order the stream job
sees them, which decides dedup and lateness), and skips records that would go to the
DLQ (undecodable or invalid), counting them in `ReadStats`. Parquet files use the Avro
record's field names (`event_time` in epoch ms), so a table exported from the topic by
any tool reads back unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq

from features.admission import MAX_INGEST_SKEW_MS, at_ingest, clamp_to_ingest
from features.codec import SchemaLookupError, from_record, to_record
from features.events import InteractionEvent, Rejection
from training.errors import SourceError

EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("watch_ms", pa.int64()),
        ("event_time", pa.int64()),
        ("request_id", pa.string()),
        ("position", pa.int32()),
        ("variant", pa.string()),
        ("device", pa.string()),
        ("country", pa.string()),
    ]
)
_BATCH_ROWS = 65_536


@dataclass
class ReadStats:
    read: int = 0
    rejected: int = 0
    """Records a DLQ would get: undecodable or not matching the event contract."""
    clamped: int = 0
    """Events whose event time ran ahead of their record timestamp, clamped as the stream job clamps."""
    stale: int = 0
    """Events over a day older than their record timestamp, left out with `drop_stale` (the job counts them late)."""


def write_events(events: Iterable[InteractionEvent], path: Path) -> int:
    """Write events as parquet (EVENT_SCHEMA), in the given order; returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with pq.ParquetWriter(path, EVENT_SCHEMA) as writer:
        batch: list[dict[str, Any]] = []
        for event in events:
            batch.append(to_record(event))
            if len(batch) >= _BATCH_ROWS:
                writer.write_table(pa.Table.from_pylist(batch, schema=EVENT_SCHEMA))
                count += len(batch)
                batch = []
        if batch or not count:
            writer.write_table(pa.Table.from_pylist(batch, schema=EVENT_SCHEMA))
            count += len(batch)
    return count


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _accepted(records: Iterable[Any], stats: ReadStats) -> Iterator[InteractionEvent]:
    for record in records:
        stats.read += 1
        when = record.get("event_time") if isinstance(record, dict) else None
        if isinstance(when, datetime):
            # fastavro turns timestamp-millis into a datetime when reading container files.
            record["event_time"] = (when - _EPOCH) // timedelta(milliseconds=1)
        event = from_record(record)
        if isinstance(event, Rejection):
            stats.rejected += 1
            continue
        yield event


def read_events(path: Path, stats: ReadStats | None = None) -> Iterator[InteractionEvent]:
    """Events from a parquet file (EVENT_SCHEMA) or an Avro object container file (`.avro`), in file order."""
    stats = stats if stats is not None else ReadStats()
    if not path.is_file():
        raise SourceError(f"event log {path} does not exist")
    if path.suffix == ".avro":
        with path.open("rb") as handle:
            yield from _accepted(fastavro.reader(handle, return_record_name=False), stats)
        return
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise SourceError(f"{path} is neither Avro (.avro) nor parquet: {error}") from None
    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
        yield from _accepted(batch.to_pylist(), stats)


def read_topic(
    bootstrap_servers: str,
    topic: str,
    stats: ReadStats | None = None,
    timeout_s: float = 60.0,
    idle_s: float = 2.0,
    extra_config: dict[str, Any] | None = None,
    max_skew_ms: int = MAX_INGEST_SKEW_MS,
    drop_stale: bool = False,
) -> Iterator[InteractionEvent]:
    """Every event in `topic`, from the first offset until the log is drained.

    Each event's time is clamped to its record timestamp + `max_skew_ms`, as the stream
    job clamps it (`features.admission.clamp_to_ingest`); the rest of admission is
    `admitted_events`. The job also counts an event over a day older than its record
    as late; a topic holding backfilled history (old events written now) would lose
    all of it that way, so the replay keeps such events unless `drop_stale` asks for
    exactly what a live job saw.

    Assigns all partitions explicitly (no consumer group, nothing committed) because the
    training replay must see the whole log. Drained = every partition has reached the
    high watermark reported at the start and nothing new arrived for `idle_s`: the
    watermark alone is not trusted, as the embedded broker (Tansu) reports too low a
    one. Per-user log order is kept (the topic is keyed by user_id, one partition per user).
    """
    from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaException, TopicPartition

    from sdk.schema_registry import SchemaRegistrySettings, consumer_codec

    stats = stats if stats is not None else ReadStats()
    # Records of Confluent serializers carry their registry's ids (FRESHRANK_SCHEMA_REGISTRY_URL).
    codec = consumer_codec(SchemaRegistrySettings())
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": "freshrank-training-replay",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        **(extra_config or {}),
    }
    consumer = Consumer(config)
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise SourceError(f"topic {topic!r} is not available at {bootstrap_servers}")
        partitions = sorted(info.partitions)
        high = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1] for p in partitions}
        position = dict.fromkeys(partitions, 0)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        last_message = time.monotonic()
        deadline = time.monotonic() + timeout_s
        while True:
            messages = consumer.consume(1000, timeout=min(idle_s, 0.5))
            now = time.monotonic()
            if not messages:
                behind = [p for p in partitions if position[p] < high[p]]
                if not behind and now - last_message >= idle_s:
                    return
                if behind and now > deadline:
                    raise SourceError(f"{topic}: partitions {behind} stalled before their high watermark")
                continue
            last_message, deadline = now, now + timeout_s
            for message in messages:
                if message.error() is not None:
                    continue
                offset, partition = message.offset(), message.partition()
                if offset is not None and partition is not None:
                    position[partition] = max(position.get(partition, 0), offset + 1)
                stats.read += 1
                decoded = codec.decode(message.value())
                if isinstance(decoded, Rejection):
                    stats.rejected += 1
                    continue
                kind, stamp = message.timestamp()
                ingest_ms = stamp if kind != TIMESTAMP_NOT_AVAILABLE else None
                event = clamp_to_ingest(decoded, ingest_ms, max_skew_ms)
                if drop_stale and at_ingest(event, ingest_ms, max_skew_ms) is None:
                    stats.stale += 1
                    continue
                stats.clamped += event is not decoded
                yield event
    except KafkaException as error:
        raise SourceError(f"reading {topic!r} from {bootstrap_servers} failed: {error}") from None
    except SchemaLookupError as error:
        raise SourceError(f"reading {topic!r}: {error}") from None
    finally:
        consumer.close()
