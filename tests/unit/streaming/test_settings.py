"""StreamSettings: credentials reach Kafka and Redis, never the logs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streaming.settings import StreamSettings


def test_sasl_without_credentials_is_refused_naming_the_variables() -> None:
    with pytest.raises(ValidationError, match="FRESHRANK_STREAM_SASL_USERNAME"):
        StreamSettings(security_protocol="SASL_SSL")


def test_credentials_reach_librdkafka_and_feast_but_not_repr() -> None:
    settings = StreamSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="job",
        sasl_password="kafka-secret",  # type: ignore[arg-type]
        redis_address="redis:6379",
        redis_password="redis-secret",  # type: ignore[arg-type]
    )
    assert settings.kafka_config()["sasl.password"] == "kafka-secret"
    assert settings.redis_connection_string() == "redis:6379,password=redis-secret"
    assert "secret" not in repr(settings)
