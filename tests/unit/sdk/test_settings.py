"""One Kafka connection model: every component reads it under its own variables and refuses incomplete SASL by them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sdk.settings import KafkaSettings
from serving.settings import KafkaEvents, ServingSettings
from streaming.settings import StreamSettings


def test_each_component_reads_the_connection_under_its_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for prefix in ("FRESHRANK_KAFKA_", "FRESHRANK_STREAM_", "FRESHRANK_SERVE_EVENTS__"):
        monkeypatch.setenv(f"{prefix}BOOTSTRAP_SERVERS", f"{prefix.lower()}:9093")
        monkeypatch.setenv(f"{prefix}SECURITY_PROTOCOL", "SASL_SSL")
        monkeypatch.setenv(f"{prefix}SASL_MECHANISM", "SCRAM-SHA-512")
        monkeypatch.setenv(f"{prefix}SASL_USERNAME", "user")
        monkeypatch.setenv(f"{prefix}SASL_PASSWORD", f"secret-of-{prefix}")
    monkeypatch.setenv("FRESHRANK_SERVE_ENVIRONMENT", "dev")
    events = ServingSettings().events
    assert isinstance(events, KafkaEvents)
    for prefix, connection in (
        ("FRESHRANK_KAFKA_", KafkaSettings().client_config()),
        ("FRESHRANK_STREAM_", StreamSettings().kafka_config()),
        ("FRESHRANK_SERVE_EVENTS__", events.connection_config()),
    ):
        assert connection["bootstrap.servers"] == f"{prefix.lower()}:9093"
        assert connection["security.protocol"] == "SASL_SSL" and connection["sasl.mechanism"] == "SCRAM-SHA-512"
        assert connection["sasl.password"] == f"secret-of-{prefix}"


@pytest.mark.parametrize(
    ("build", "variable"),
    [
        (lambda: KafkaSettings(security_protocol="SASL_SSL"), "FRESHRANK_KAFKA_SASL_USERNAME"),
        (lambda: StreamSettings(security_protocol="SASL_PLAINTEXT"), "FRESHRANK_STREAM_SASL_USERNAME"),
        (lambda: KafkaEvents(security_protocol="SASL_SSL"), "FRESHRANK_SERVE_EVENTS__SASL_USERNAME"),
    ],
)
def test_sasl_without_credentials_is_refused_naming_the_components_variables(build: object, variable: str) -> None:
    with pytest.raises(ValidationError, match=variable):
        build()  # type: ignore[operator]
