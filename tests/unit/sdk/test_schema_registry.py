"""Records written by confluent-kafka's AvroSerializer against a registry decode with our codec.

The registry is tests/schema_registry_server.py (no Confluent-compatible server can
be installed here); the client, the serializer and the wire bytes are confluent-kafka's.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from features.codec import EventCodec, SchemaLookupError, SchemaRegistry, to_record
from features.events import InteractionEvent, Rejection
from sdk.schema_registry import (
    SchemaRegistryRefused,
    SchemaRegistrySettings,
    consumer_codec,
    producer_codec,
)
from tests.factories import make_event
from tests.schema_registry_server import FakeSchemaRegistry

OUR_SCHEMA = SchemaRegistry().latest().definition
CONTEXT = SerializationContext("interactions", MessageField.VALUE)


@pytest.fixture
def registry() -> Iterator[FakeSchemaRegistry]:
    with FakeSchemaRegistry() as server:
        yield server


def serialize(url: str, schema: dict[str, Any], record: dict[str, Any], topic: str = "interactions") -> bytes:
    """What a Java/Go/Python service with Confluent's serializer writes to the topic."""
    serializer = AvroSerializer(SchemaRegistryClient({"url": url}), json.dumps(schema))
    data = serializer(record, SerializationContext(topic, MessageField.VALUE))
    assert data is not None
    return data


def settings(url: str, **overrides: Any) -> SchemaRegistrySettings:
    return SchemaRegistrySettings(url=url, **overrides)


def test_a_record_from_avro_serializer_decodes_with_the_registry_assigned_id(registry: FakeSchemaRegistry) -> None:
    event = make_event()
    data = serialize(registry.url, OUR_SCHEMA, to_record(event))
    assert int.from_bytes(data[1:5], "big") == 100001  # the registry's id, not the file registry's 1
    assert EventCodec().decode(data) == Rejection("value", "schema id 100001 is not in the schema registry")
    codec = consumer_codec(settings(registry.url))
    assert codec.decode(data) == event


def test_a_newer_compatible_writer_schema_is_resolved_against_our_reader_schema(registry: FakeSchemaRegistry) -> None:
    newer = copy.deepcopy(OUR_SCHEMA)
    newer["fields"].append({"name": "app_version", "type": ["null", "string"], "default": None})
    event = make_event(watch_ms=None)
    data = serialize(registry.url, newer, {**to_record(event), "app_version": "7.1"})
    assert consumer_codec(settings(registry.url)).decode(data) == event


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda s: s["fields"].pop(2), "reader_field_missing_default_value: item_id"),
        (lambda s: s["fields"][3]["type"]["symbols"].append("purchase"), "missing_enum_symbols"),
        (lambda s: s["fields"][4].update(type=["null", "string"]), "missing_union_branch"),
    ],
)
def test_an_incompatible_writer_schema_is_refused_with_the_reason(
    registry: FakeSchemaRegistry, change: Any, reason: str
) -> None:
    incompatible = copy.deepcopy(OUR_SCHEMA)
    change(incompatible)
    record = {**to_record(make_event()), "watch_ms": None}
    record = {k: v for k, v in record.items() if k in {f["name"] for f in incompatible["fields"]}}
    # Under its own topic's subject: the registry has no reason to refuse it there.
    data = serialize(registry.url, incompatible, record, topic="legacy-clicks")
    result = consumer_codec(settings(registry.url)).decode(data)
    assert isinstance(result, Rejection)
    assert "writer schema id 100001 is incompatible with reader schema interactions-value" in result.reason
    assert reason in result.reason


def test_unknown_ids_are_rejected_and_each_id_is_asked_once(registry: FakeSchemaRegistry) -> None:
    codec = consumer_codec(settings(registry.url))
    good = serialize(registry.url, OUR_SCHEMA, to_record(make_event()))
    bogus = b"\x00\x00\x00\x00\x07" + good[5:]
    for _ in range(3):
        assert codec.decode(bogus) == Rejection("value", "schema id 7 is not in the schema registry")
        assert isinstance(codec.decode(good), InteractionEvent)
    asked = [r for r in registry.state.requests if r.startswith("GET /schemas/ids/")]
    assert sorted(asked) == ["GET /schemas/ids/100001", "GET /schemas/ids/7"]


def test_a_registry_outage_raises_instead_of_rejecting_and_is_retried(registry: FakeSchemaRegistry) -> None:
    data = serialize(registry.url, OUR_SCHEMA, to_record(make_event()))
    codec = consumer_codec(settings(registry.url))
    registry.state.fail_with = 500
    with pytest.raises(SchemaLookupError, match="HTTP 500"):
        codec.decode(data)
    registry.state.fail_with = None
    assert codec.decode(data) == make_event()


def test_the_producer_codec_registers_our_schema_and_writes_its_id(registry: FakeSchemaRegistry) -> None:
    codec = producer_codec(settings(registry.url), topic="interactions")
    assert codec.schema_id == 100001
    assert registry.state.subjects == {"interactions-value": [100001]}
    data = codec.encode(make_event())
    assert data[1:5] == (100001).to_bytes(4, "big")
    assert consumer_codec(settings(registry.url)).decode(data) == make_event()


def test_without_auto_register_an_unregistered_schema_says_what_to_run(registry: FakeSchemaRegistry) -> None:
    with pytest.raises(SchemaRegistryRefused, match="freshrank schema register"):
        producer_codec(settings(registry.url, auto_register=False), topic="interactions")
    producer_codec(settings(registry.url), topic="interactions")
    assert producer_codec(settings(registry.url, auto_register=False), topic="interactions").schema_id == 100001


def test_basic_auth_from_the_environment_reaches_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeSchemaRegistry(basic_auth="svc:s3cret") as server:
        monkeypatch.setenv("FRESHRANK_SCHEMA_REGISTRY_URL", server.url)
        with pytest.raises(Exception, match="401"):
            producer_codec(SchemaRegistrySettings(), topic="interactions")
        monkeypatch.setenv("FRESHRANK_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "svc:s3cret")
        assert producer_codec(SchemaRegistrySettings(), topic="interactions").schema_id == 100001


def test_without_a_url_the_file_registry_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRESHRANK_SCHEMA_REGISTRY_URL", raising=False)
    assert producer_codec(SchemaRegistrySettings(), topic="interactions").schema_id == 1
    assert consumer_codec(SchemaRegistrySettings()).decode(EventCodec().encode(make_event())) == make_event()


def test_the_http_collector_names_the_registry_outage_for_every_event_it_could_not_send(
    registry: FakeSchemaRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from serving.events import KafkaEventSink
    from serving.metrics import ServingMetrics
    from serving.settings import KafkaEvents

    monkeypatch.setenv("FRESHRANK_SCHEMA_REGISTRY_URL", registry.url)
    registry.state.fail_with = 503
    # No broker is needed: the registry is asked before anything is produced.
    sink = KafkaEventSink(KafkaEvents(bootstrap_servers="127.0.0.1:1"), ServingMetrics())
    published = asyncio.run(sink.publish([make_event()]))
    # Nothing reached Kafka, with the reason per event: POST /v1/events answers that as a 503 to resend.
    assert published.acknowledged == 0
    assert published.outcomes[0] is not None and "schema registry request failed: HTTP 503" in published.outcomes[0]
    assert "resend" in published.outcomes[0]


def test_an_unknown_id_is_asked_again_after_the_ttl_a_known_one_never(registry: FakeSchemaRegistry) -> None:
    from features.codec import FetchedSchemas
    from sdk.schema_registry import connect, fetcher

    now = [0.0]
    schemas = FetchedSchemas(
        fetcher(connect(settings(registry.url))), SchemaRegistry().latest(), unknown_ttl_s=30, clock_s=lambda: now[0]
    )
    codec = EventCodec(schemas)
    early = b"\x00" + (100001).to_bytes(4, "big") + EventCodec().encode(make_event())[5:]
    # A record whose id the registry (a lagging follower, say) does not know yet.
    assert codec.decode(early) == Rejection("value", "schema id 100001 is not in the schema registry")
    serialize(registry.url, OUR_SCHEMA, to_record(make_event()))  # now it is registered as 100001
    now[0] = 29.0
    assert isinstance(codec.decode(early), Rejection)  # still cached
    now[0] = 31.0
    assert codec.decode(early) == make_event()
    now[0] = 10_000.0
    assert codec.decode(early) == make_event()
    assert [r for r in registry.state.requests if r.startswith("GET /schemas/ids/")] == ["GET /schemas/ids/100001"] * 2
