"""Avro codec for interaction events in Confluent wire format, and the file-based schema registry.

Wire format: magic byte 0, 4-byte big-endian schema id, Avro binary body. A
reader decodes with the writer's schema (found by id) resolved against the
newest registered schema, so adding a schema version never breaks readers.

Decoding returns a `Rejection` for bad bytes instead of raising: a bad record
is data headed for the DLQ, never a reason to stop a job. This module only
reads the schema files that ship with the package; it never touches Kafka.
"""

from __future__ import annotations

import copy
import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from features.events import EventType, InteractionEvent, Rejection

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")
SUBJECT = "interactions-value"
SCHEMA_DIR = Path(__file__).parent / "schemas"


def _without_logical_types(schema: Any) -> Any:
    """Copy of a schema with logical types dropped.

    timestamp-millis is a plain long on the wire; keeping it as an int avoids
    a datetime round trip per event and keeps event time exact to the ms.
    """
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(v) for v in schema]
    return schema


@dataclass(frozen=True)
class RegisteredSchema:
    schema_id: int
    subject: str
    definition: dict[str, Any]
    parsed: Any


class SchemaRegistry:
    """Schema id -> schema, read from a `registry.json` beside the `.avsc` files."""

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        index = json.loads((directory / "registry.json").read_text())
        self._by_id: dict[int, RegisteredSchema] = {}
        self._latest: dict[str, RegisteredSchema] = {}
        for subject, versions in index["subjects"].items():
            for version in sorted(versions, key=lambda v: v["id"]):
                definition = json.loads((directory / version["file"]).read_text())
                parsed = fastavro.parse_schema(_without_logical_types(copy.deepcopy(definition)))
                entry = RegisteredSchema(version["id"], subject, definition, parsed)
                if entry.schema_id in self._by_id:
                    raise ValueError(f"schema id {entry.schema_id} registered twice in {directory}")
                self._by_id[entry.schema_id] = entry
                self._latest[subject] = entry

    def by_id(self, schema_id: int) -> RegisteredSchema | None:
        return self._by_id.get(schema_id)

    def latest(self, subject: str = SUBJECT) -> RegisteredSchema:
        return self._latest[subject]


class EventCodec:
    """Encodes events with the newest schema; decodes any registered version."""

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.registry = registry or SchemaRegistry()
        self._writer = self.registry.latest()

    @property
    def schema_id(self) -> int:
        return self._writer.schema_id

    def encode(self, event: InteractionEvent) -> bytes:
        out = io.BytesIO()
        out.write(HEADER.pack(MAGIC_BYTE, self._writer.schema_id))
        fastavro.schemaless_writer(out, self._writer.parsed, to_record(event))
        return out.getvalue()

    def decode(self, data: bytes | None) -> InteractionEvent | Rejection:
        if data is None or len(data) < HEADER.size:
            return Rejection("value", "record is empty or shorter than the 5-byte wire-format header")
        magic, schema_id = HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            return Rejection("value", f"magic byte is {magic}, expected {MAGIC_BYTE} (Confluent wire format)")
        writer = self.registry.by_id(schema_id)
        if writer is None:
            return Rejection("value", f"schema id {schema_id} is not in the schema registry")
        reader = None if writer.schema_id == self._writer.schema_id else self._writer.parsed
        body = io.BytesIO(data)
        body.seek(HEADER.size)
        try:
            record = fastavro.schemaless_reader(body, writer.parsed, reader)
        except Exception as error:  # fastavro raises many types on garbage input
            return Rejection("value", f"Avro body does not decode with schema {schema_id}: {describe(error)}")
        if body.tell() != len(data):
            return Rejection("value", f"{len(data) - body.tell()} trailing bytes after the Avro body")
        return from_record(record)


def to_record(event: InteractionEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "event_type": event.event_type.value,
        "watch_ms": event.watch_ms,
        "event_time": event.event_time_ms,
        "request_id": event.request_id,
        "position": event.position,
        "variant": event.variant,
        "device": event.device,
        "country": event.country,
    }


def from_record(record: Any) -> InteractionEvent | Rejection:
    if not isinstance(record, dict):
        return Rejection("value", "Avro body is not a record")
    try:
        return InteractionEvent(
            event_id=record["event_id"],
            user_id=record["user_id"],
            item_id=record["item_id"],
            event_type=EventType(record["event_type"]),
            event_time_ms=record["event_time"],
            watch_ms=record.get("watch_ms"),
            request_id=record.get("request_id"),
            position=record.get("position"),
            variant=record.get("variant"),
            device=record.get("device"),
            country=record.get("country"),
        )
    except (KeyError, ValueError) as error:
        return Rejection("value", f"record does not match the event contract: {describe(error)}")


def describe(error: Exception) -> str:
    """A decode error in words, never quoting the payload: a UnicodeDecodeError's repr holds the whole body."""
    if isinstance(error, UnicodeDecodeError):
        return f"a string field is not valid UTF-8 ({error.reason} at byte {error.start} of the field)"
    if isinstance(error, KeyError):
        return f"field {str(error)[:80]} is missing"
    text = str(error)
    return f"{type(error).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"
