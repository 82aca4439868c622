"""SDK behaviour that needs no broker: validation before send, failures surfaced, backpressure."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError
from pydantic import SecretStr, ValidationError

from features.events import InteractionEvent
from sdk.errors import InvalidEventError, PublisherBackpressure, PublisherClosedError, UndeliveredEventsError
from sdk.publisher import EventPublisher
from sdk.settings import KafkaSettings
from stack.ports import free_port
from tests.factories import NOW_MS, make_event


def unreachable(**overrides: object) -> KafkaSettings:
    """Settings pointing at a closed local port: nothing will ever be delivered."""
    return KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", **overrides)  # type: ignore[arg-type]


def test_invalid_event_raises_naming_the_field_and_sends_nothing() -> None:
    publisher = EventPublisher(unreachable(), clock_ms=lambda: NOW_MS)
    with pytest.raises(InvalidEventError) as raised:
        publisher.publish(make_event(user_id=""))
    assert raised.value.field == "user_id"
    assert "user_id" in str(raised.value)
    assert publisher.stats.accepted == 0


def test_a_bad_event_in_a_batch_sends_none_of_the_batch() -> None:
    publisher = EventPublisher(unreachable(), clock_ms=lambda: NOW_MS)
    with pytest.raises(InvalidEventError) as raised:
        publisher.publish_many([make_event(event_id="a"), make_event(event_id="b", country="France")])
    assert raised.value.field == "events[1].country"
    assert publisher.stats.accepted == 0


def test_delivery_failures_reach_the_callback_counters_and_flush() -> None:
    failures: list[tuple[InteractionEvent, KafkaError | None]] = []
    settings = unreachable(delivery_timeout_ms=500)
    publisher = EventPublisher(settings, on_delivery=lambda e, err: failures.append((e, err)), clock_ms=lambda: NOW_MS)
    publisher.publish(make_event())
    with pytest.raises(UndeliveredEventsError) as raised:
        publisher.flush(timeout_s=10)
    assert raised.value.failed == 1
    assert publisher.stats.failed == 1 and publisher.stats.delivered == 0
    assert len(failures) == 1 and failures[0][0] == make_event() and failures[0][1] is not None


def test_full_local_queue_raises_backpressure_with_retry_after() -> None:
    settings = unreachable(queue_max_messages=5, queue_full_timeout_s=0.2)
    publisher = EventPublisher(settings, clock_ms=lambda: NOW_MS)
    for index in range(5):
        publisher.publish(make_event(event_id=f"e{index}"))
    with pytest.raises(PublisherBackpressure) as raised:
        publisher.publish(make_event(event_id="overflow"))
    assert raised.value.retry_after_s > 0
    assert publisher.stats.accepted == 5


def test_context_manager_refuses_to_exit_quietly_with_undelivered_events() -> None:
    with pytest.raises(UndeliveredEventsError):
        with EventPublisher(unreachable(delivery_timeout_ms=300), clock_ms=lambda: NOW_MS) as publisher:
            publisher.publish(make_event())


def test_publish_after_close_is_refused() -> None:
    publisher = EventPublisher(unreachable(), clock_ms=lambda: NOW_MS)
    publisher.close(timeout_s=1)
    with pytest.raises(PublisherClosedError):
        publisher.publish(make_event())


def test_sasl_needs_credentials_and_keeps_the_password_secret() -> None:
    with pytest.raises(ValidationError, match="FRESHRANK_KAFKA_SASL_USERNAME"):
        KafkaSettings(security_protocol="SASL_SSL")
    settings = KafkaSettings(
        security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="app", sasl_password=SecretStr("s3cret")
    )
    assert "s3cret" not in repr(settings)
    assert settings.producer_config()["sasl.password"] == "s3cret"
    assert settings.producer_config()["enable.idempotence"] is True
    assert settings.producer_config()["acks"] == "all"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHRANK_KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("FRESHRANK_KAFKA_TOPIC", "events")
    settings = KafkaSettings()
    assert settings.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.topic == "events"
