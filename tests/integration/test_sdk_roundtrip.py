"""The SDK against a real broker: what goes in comes out, byte for byte, in per-user order."""

from __future__ import annotations

import collections
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from features.codec import EventCodec
from features.events import EventType, InteractionEvent
from sdk.clock import wall_clock_ms
from sdk.errors import InvalidEventError
from sdk.publisher import EventPublisher
from sdk.settings import KafkaSettings

codec = EventCodec()


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[tuple[int, bytes, bytes]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(8)])
    records: list[tuple[int, bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                assert message.error() is None, message.error()
                records.append((message.partition(), message.key(), message.value()))
        # Linger a little: more records than expected would be a bug too.
        for message in consumer.consume(1000, 1.0):
            records.append((message.partition(), message.key(), message.value()))
    finally:
        consumer.close()
    return records


def synthetic_events(count: int, users: int) -> list[InteractionEvent]:
    start = wall_clock_ms() - 60_000
    kinds = list(EventType)
    return [
        InteractionEvent(
            event_id=f"ev-{i}",
            user_id=f"user-{i % users}",
            item_id=f"item-{(i * 7) % 301}",
            event_type=kinds[i % len(kinds)],
            event_time_ms=start + i,
            watch_ms=(i * 13) % 60_000 if kinds[i % len(kinds)] is EventType.VIEW else None,
            position=i % 10,
            country="DE",
        )
        for i in range(count)
    ]


def test_ten_thousand_events_arrive_byte_for_byte_in_per_user_order(bootstrap: str, fresh_topic: str) -> None:
    events = synthetic_events(10_000, users=137)
    delivered: list[str] = []
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic=fresh_topic)

    def on_delivery(event: InteractionEvent, error: object) -> None:
        if error is None:
            delivered.append(event.event_id)

    with EventPublisher(settings, on_delivery=on_delivery) as publisher:
        for event in events:
            publisher.publish(event)
    p = publisher
    assert p.stats.delivered == 10_000 and p.stats.failed == 0
    assert len(delivered) == 10_000

    records = read_all(bootstrap, fresh_topic, expected=10_000)
    assert len(records) == 10_000
    assert sorted(value for _, _, value in records) == sorted(codec.encode(e) for e in events)

    per_user: dict[bytes, list[str]] = collections.defaultdict(list)
    partitions_of_user: dict[bytes, set[int]] = collections.defaultdict(set)
    for partition, key, value in records:
        decoded = codec.decode(value)
        assert isinstance(decoded, InteractionEvent)
        assert key == decoded.user_id.encode()
        per_user[key].append(decoded.event_id)
        partitions_of_user[key].add(partition)
    for user, event_ids in per_user.items():
        sent_order = [e.event_id for e in events if e.user_id.encode() == user]
        assert event_ids == sent_order
        assert len(partitions_of_user[user]) == 1
    assert len({p for ps in partitions_of_user.values() for p in ps}) == 8  # keys spread over partitions


def test_invalid_events_are_refused_before_anything_is_sent(bootstrap: str, fresh_topic: str) -> None:
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic=fresh_topic)
    good = synthetic_events(3, users=1)
    bad = [
        InteractionEvent("x1", "", "i", EventType.CLICK, wall_clock_ms()),
        InteractionEvent("x2", "u", "i", EventType.CLICK, wall_clock_ms() + 86_400_000),
        InteractionEvent("x3", "u", "i", EventType.VIEW, wall_clock_ms(), watch_ms=-5),
    ]
    with EventPublisher(settings) as publisher:
        publisher.publish(good[0])
        for event, field in zip(bad, ["user_id", "event_time", "watch_ms"], strict=True):
            with pytest.raises(InvalidEventError) as raised:
                publisher.publish(event)
            assert raised.value.field == field
        with pytest.raises(InvalidEventError):
            publisher.publish_many([good[1], bad[0], good[2]])
    assert publisher.stats.accepted == 1 and publisher.stats.delivered == 1
    records = read_all(bootstrap, fresh_topic, expected=1, timeout_s=10)
    assert [value for _, _, value in records] == [codec.encode(good[0])]


def test_with_a_schema_registry_the_sdk_and_the_collector_write_the_registry_id(
    bootstrap: str, fresh_topic: str
) -> None:
    import asyncio

    from sdk.schema_registry import SchemaRegistrySettings, consumer_codec
    from serving.events import KafkaEventSink
    from serving.metrics import ServingMetrics
    from serving.settings import KafkaEvents
    from tests.schema_registry_server import FakeSchemaRegistry

    events = synthetic_events(20, users=3)
    with FakeSchemaRegistry() as registry:
        registry_settings = SchemaRegistrySettings(url=registry.url)
        with EventPublisher(
            KafkaSettings(bootstrap_servers=bootstrap, topic=fresh_topic), schema_registry=registry_settings
        ) as publisher:
            publisher.publish_many(events[:10])
        # The HTTP collector's sink reads the same FRESHRANK_SCHEMA_REGISTRY_* settings.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("FRESHRANK_SCHEMA_REGISTRY_URL", registry.url)
            sink = KafkaEventSink(KafkaEvents(bootstrap_servers=bootstrap, topic=fresh_topic), ServingMetrics())
            assert asyncio.run(sink.publish(events[10:])).acknowledged == 10
            sink.close()
        assert registry.state.subjects == {f"{fresh_topic}-value": [100001]}
        records = read_all(bootstrap, fresh_topic, expected=20)
        assert {value[1:5] for _, _, value in records} == {(100001).to_bytes(4, "big")}
        decoder = consumer_codec(registry_settings)
        assert sorted(e.event_id for e in (decoder.decode(v) for _, _, v in records)) == sorted(  # type: ignore[union-attr]
            e.event_id for e in events
        )
