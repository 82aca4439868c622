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


def test_the_flink_dashboard_port_and_address_reach_the_mini_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    from streaming.job import dashboard_url, flink_options

    monkeypatch.setenv("FRESHRANK_STREAM_FLINK_UI_PORT", "18081")
    monkeypatch.setenv("FRESHRANK_STREAM_FLINK_UI_BIND_ADDRESS", "0.0.0.0")
    settings = StreamSettings()
    options = flink_options(settings, restore_from=None)
    assert options["rest.port"] == "18081" and options["rest.bind-address"] == "0.0.0.0"
    # A wildcard bind is announced as an address a browser can open.
    assert dashboard_url(settings) == "http://127.0.0.1:18081"


def test_the_dashboard_is_on_8081_of_loopback_by_default_and_port_0_leaves_it_to_flink() -> None:
    from streaming.job import dashboard_url, flink_options

    assert dashboard_url(StreamSettings()) == "http://127.0.0.1:8081"
    unset = StreamSettings(flink_ui_port=0)
    options = flink_options(unset, restore_from=None)
    # Flink picks the port, but it still listens on loopback only (left alone: every interface).
    assert "rest.port" not in options and options["rest.bind-address"] == "127.0.0.1"
    assert dashboard_url(unset) is None
