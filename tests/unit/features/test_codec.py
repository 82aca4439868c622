from __future__ import annotations

import json
import struct
from pathlib import Path

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.codec import SCHEMA_DIR, EventCodec, SchemaRegistry
from features.events import EventType, InteractionEvent, Rejection
from tests.factories import make_event

codec = EventCodec()


def test_wire_format_is_magic_byte_schema_id_then_avro_body() -> None:
    event = make_event()
    data = codec.encode(event)
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == codec.schema_id == 1
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / "interaction_event.v1.avsc").read_text()))
    body = fastavro.schemaless_reader(__import__("io").BytesIO(data[5:]), schema, None)
    assert body["event_id"] == "e-1"
    assert body["event_type"] == "view"
    # timestamp-millis decodes to the same instant with the plain schema too
    assert int(body["event_time"].timestamp() * 1000) == event.event_time_ms


def test_known_bytes_stay_stable() -> None:
    # Hand-encoded: strings as zigzag length + utf-8, enum index 1 (click), null-union index 0,
    # zigzag varint of the timestamp, then five null unions.
    event = InteractionEvent("e", "u", "i", EventType.CLICK, 1_700_000_000_000)
    assert codec.encode(event).hex() == "0000000001026502750269020080a0abfef9620000000000"


optional_text = st.one_of(st.none(), st.text(min_size=1, max_size=20))
events = st.builds(
    InteractionEvent,
    event_id=st.text(min_size=1, max_size=40),
    user_id=st.text(min_size=1, max_size=40),
    item_id=st.text(min_size=1, max_size=40),
    event_type=st.sampled_from(list(EventType)),
    event_time_ms=st.integers(min_value=0, max_value=2**62),
    watch_ms=st.one_of(st.none(), st.integers(min_value=0, max_value=2**62)),
    request_id=optional_text,
    position=st.one_of(st.none(), st.integers(min_value=-(2**31), max_value=2**31 - 1)),
    variant=optional_text,
    device=optional_text,
    country=optional_text,
)


@given(events)
def test_round_trip_is_exact(event: InteractionEvent) -> None:
    assert codec.decode(codec.encode(event)) == event


@pytest.mark.parametrize(
    ("data", "reason_part"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"\x00\x00\x00", "shorter"),
        (b"\x01\x00\x00\x00\x01abc", "magic byte is 1"),
        (b"\x00\x00\x00\x00\x63abc", "schema id 99 is not in the schema registry"),
        (b"\x00\x00\x00\x00\x01\x02", "does not decode"),
    ],
)
def test_bad_bytes_are_rejections_not_exceptions(data: bytes | None, reason_part: str) -> None:
    result = codec.decode(data)
    assert isinstance(result, Rejection)
    assert reason_part in result.reason


def test_trailing_garbage_is_rejected() -> None:
    result = codec.decode(codec.encode(make_event()) + b"\x00")
    assert isinstance(result, Rejection)
    assert "trailing" in result.reason


def test_an_unknown_enum_symbol_is_rejected() -> None:
    data = bytearray(codec.encode(InteractionEvent("e", "u", "i", EventType.CLICK, 1_700_000_000_000)))
    data[11] = 0x20  # enum index 16: no such event type
    result = codec.decode(bytes(data))
    assert isinstance(result, Rejection)


def test_readers_of_a_new_schema_version_still_read_old_records(tmp_path: Path) -> None:
    """A v2 schema adds a field with a default; v1 records keep decoding (Avro schema resolution)."""
    v1 = json.loads((SCHEMA_DIR / "interaction_event.v1.avsc").read_text())
    v2 = {**v1, "fields": [*v1["fields"], {"name": "app_version", "type": ["null", "string"], "default": None}]}
    (tmp_path / "interaction_event.v1.avsc").write_text(json.dumps(v1))
    (tmp_path / "interaction_event.v2.avsc").write_text(json.dumps(v2))
    files = [{"id": 1, "file": "interaction_event.v1.avsc"}, {"id": 2, "file": "interaction_event.v2.avsc"}]
    (tmp_path / "registry.json").write_text(json.dumps({"subjects": {"interactions-value": files}}))
    old_bytes = codec.encode(make_event())
    new_codec = EventCodec(SchemaRegistry(tmp_path))
    assert new_codec.schema_id == 2
    assert new_codec.decode(old_bytes) == make_event()
    assert new_codec.decode(new_codec.encode(make_event())) == make_event()
    # and an old reader refuses an id it does not know, with the reason
    unknown = codec.decode(new_codec.encode(make_event()))
    assert isinstance(unknown, Rejection) and "schema id 2" in unknown.reason


def test_duplicate_schema_ids_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.avsc").write_text((SCHEMA_DIR / "interaction_event.v1.avsc").read_text())
    files = [{"id": 1, "file": "a.avsc"}, {"id": 1, "file": "a.avsc"}]
    (tmp_path / "registry.json").write_text(json.dumps({"subjects": {"interactions-value": files}}))
    with pytest.raises(ValueError, match="registered twice"):
        SchemaRegistry(tmp_path)
