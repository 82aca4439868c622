"""Avro codec for interaction events in Confluent wire format, and the file-based schema registry.

Wire format: magic byte 0, 4-byte big-endian schema id, Avro binary body. A
reader decodes with the writer's schema (found by id) resolved against the
newest registered schema, so adding a schema version never breaks readers.

Writer schemas come from the file registry that ships with the package (the
local default), or from a Confluent-compatible registry through `FetchedSchemas`,
which is handed a fetch function: this module never does network I/O itself
(`sdk.schema_registry` builds the function from confluent-kafka's client). A
fetched writer schema is checked once against our newest reader schema with
Avro's resolution rules; an incompatible one is a `Rejection` naming the
fields at fault, for every record written with it.

Decoding returns a `Rejection` for bad bytes instead of raising: a bad record
is data headed for the DLQ, never a reason to stop a job. The one exception is
`SchemaLookupError` (the registry could not be asked): that is an outage, not a
bad record, and the caller retries instead of sending the record to the DLQ.
"""

from __future__ import annotations

import copy
import io
import json
import math
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import avro.compatibility
import avro.errors
import avro.schema
import fastavro
import fastavro.schema

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


class WriterSchemas(Protocol):
    """Where the codec finds the schema a record was written with, and our newest (reader) schema."""

    def by_id(self, schema_id: int) -> RegisteredSchema | Rejection | None: ...

    def latest(self, subject: str = SUBJECT) -> RegisteredSchema: ...


class SchemaLookupError(Exception):
    """The schema registry could not be asked (down, timeout, 5xx): retry later, do not DLQ the record."""


@dataclass(frozen=True)
class FetchedSchema:
    """What a registry returns for a schema id: its type (AVRO, PROTOBUF, JSON) and its text."""

    schema_type: str
    text: str


# schema id -> the writer schema, or None if the registry has no such id.
# Raises SchemaLookupError when the registry cannot be asked.
SchemaFetch = Callable[[int], FetchedSchema | None]


def compatibility_problem(writer: dict[str, Any], reader: dict[str, Any]) -> str | None:
    """Why data written with `writer` cannot be read with `reader` (Avro schema resolution), or None."""
    try:
        checker = avro.compatibility.ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
        result = checker.get_compatibility(avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer)))
    except (avro.errors.AvroException, ValueError, TypeError) as error:
        return f"not a valid Avro schema: {error}"
    if result.compatibility is avro.compatibility.SchemaCompatibilityType.compatible:
        return None
    kinds = sorted({kind.value for kind in result.incompatibilities})
    where = sorted(result.locations - {"/"}) or ["/"]
    return f"{', '.join(kinds)}: {', '.join(sorted(map(str, result.messages)))} at {', '.join(where)}"


def canonical_form(definition: dict[str, Any]) -> str:
    return str(fastavro.schema.to_parsing_canonical_form(definition))


class FetchedSchemas:
    """Writer schemas fetched by id from a Confluent-compatible registry, checked once, cached.

    Each id costs one fetch and one compatibility check, then nothing: the answer
    (a schema, or the Rejection of an incompatible one; ids never change their
    schema) stays in a bounded LRU cache, so records with many ids cannot grow
    memory beyond `cache_size` entries. An id the registry does not know is asked
    again after `unknown_ttl_s` (a registry follower may learn a new id a moment
    after the producer got it from the primary), so garbage ids cost at most one
    request per id and interval. A fetch that fails with SchemaLookupError is not
    cached: the next record asks again. A writer schema whose canonical form
    equals the reader's decodes without Avro resolution (as fast as the file registry).
    """

    def __init__(
        self,
        fetch: SchemaFetch,
        reader: RegisteredSchema,
        cache_size: int = 1024,
        unknown_ttl_s: float = 30.0,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._reader = reader
        self._reader_form = canonical_form(reader.definition)
        self._cache: OrderedDict[int, tuple[RegisteredSchema | Rejection, float]] = OrderedDict()
        self._cache_size = cache_size
        self._unknown_ttl_s = unknown_ttl_s
        self._clock_s = clock_s

    def latest(self, subject: str = SUBJECT) -> RegisteredSchema:
        return self._reader

    def by_id(self, schema_id: int) -> RegisteredSchema | Rejection:
        now = self._clock_s()
        cached = self._cache.get(schema_id)
        if cached is not None and cached[1] > now:
            self._cache.move_to_end(schema_id)
            return cached[0]
        fetched = self._fetch(schema_id)
        resolved = self._resolve(schema_id, fetched)
        self._cache[schema_id] = (resolved, now + self._unknown_ttl_s if fetched is None else math.inf)
        self._cache.move_to_end(schema_id)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return resolved

    def _resolve(self, schema_id: int, fetched: FetchedSchema | None) -> RegisteredSchema | Rejection:
        if fetched is None:
            return Rejection("value", f"schema id {schema_id} is not in the schema registry")
        if fetched.schema_type.upper() != "AVRO":
            return Rejection("value", f"schema id {schema_id} is a {fetched.schema_type} schema, not Avro")
        try:
            definition = json.loads(fetched.text)
        except ValueError:
            return Rejection("value", f"schema id {schema_id} is not valid JSON")
        if not isinstance(definition, dict):
            return Rejection("value", f"schema id {schema_id} is not an Avro record schema")
        problem = compatibility_problem(definition, self._reader.definition)
        if problem is not None:
            return Rejection(
                "value", f"writer schema id {schema_id} is incompatible with reader schema {SUBJECT}: {problem}"
            )
        if canonical_form(definition) == self._reader_form:
            return RegisteredSchema(schema_id, SUBJECT, self._reader.definition, self._reader.parsed)
        try:
            parsed = fastavro.parse_schema(_without_logical_types(copy.deepcopy(definition)))
        except Exception as error:  # fastavro's SchemaParseException and friends
            return Rejection("value", f"schema id {schema_id} does not parse: {error}")
        return RegisteredSchema(schema_id, SUBJECT, definition, parsed)


class EventCodec:
    """Encodes events with the newest schema; decodes any registered version.

    `writer_id` is the id our newest schema has in the registry the records go to
    (a Confluent registry assigns its own ids); by default the file registry's id.
    """

    def __init__(self, registry: WriterSchemas | None = None, writer_id: int | None = None) -> None:
        self.registry: WriterSchemas = registry or SchemaRegistry()
        self._writer = self.registry.latest()
        self._writer_id = self._writer.schema_id if writer_id is None else writer_id

    @property
    def schema_id(self) -> int:
        return self._writer_id

    def encode(self, event: InteractionEvent) -> bytes:
        out = io.BytesIO()
        out.write(HEADER.pack(MAGIC_BYTE, self._writer_id))
        fastavro.schemaless_writer(out, self._writer.parsed, to_record(event))
        return out.getvalue()

    def decode(self, data: bytes | None) -> InteractionEvent | Rejection:
        if data is None or len(data) < HEADER.size:
            return Rejection("value", "record is empty or shorter than the 5-byte wire-format header")
        magic, schema_id = HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            return Rejection("value", f"magic byte is {magic}, expected {MAGIC_BYTE} (Confluent wire format)")
        writer = self.registry.by_id(schema_id)  # SchemaLookupError propagates: an outage, not a bad record
        if writer is None:
            return Rejection("value", f"schema id {schema_id} is not in the schema registry")
        if isinstance(writer, Rejection):
            return writer
        # Same parsed schema: no resolution needed (the common case, and the fast one).
        reader = None if writer.parsed is self._writer.parsed else self._writer.parsed
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
