"""The environment the chart gives each role is what that role's settings class reads.

The chart names the variables (templates/_helpers.tpl); the packages own the settings
classes. These tests build each settings class from the rendered environment, so a renamed
field or variable fails here instead of being silently ignored by pydantic-settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from tests.unit.deploy.chart import PRODUCTION_VALUES, Manifest, env_of, load_values, one, pod_spec, render

# Variables the chart already sets for settings the stream job does not have yet (Kafka SASL
# and Redis AUTH for the job; see helm/freshrank/README.md, "Contract with the application").
PENDING_STREAM_FIELDS = {"security_protocol", "sasl_mechanism", "sasl_username", "sasl_password", "redis_password"}
SECRET_PLACEHOLDER = "from-a-secret"


@pytest.fixture(scope="module")
def production() -> list[Manifest]:
    return render(load_values(PRODUCTION_VALUES))


def environment(container: Mapping[str, Any], prefix: str) -> dict[str, str]:
    """The container's variables with `prefix`; values from Secrets become a placeholder."""
    return {
        name: entry.get("value", SECRET_PLACEHOLDER)
        for name, entry in env_of(container).items()
        if name.startswith(prefix)
    }


def fields_of(model: type[BaseModel], name: str) -> set[str]:
    """Field names reached by an env var name (nested with "__", through union members)."""
    head, _, rest = name.partition("__")
    if head not in model.model_fields:
        return set()
    if not rest:
        return {head}
    annotation = model.model_fields[head].annotation
    members = getattr(annotation, "__args__", (annotation,))
    found = set()
    for member in members:
        if isinstance(member, type) and issubclass(member, BaseModel) and fields_of(member, rest):
            found.add(f"{head}.{rest}")
    return found


def secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def test_stream_job_settings_read_the_flink_pod_environment(
    production: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streaming.settings import StreamSettings

    container = pod_spec(one(production, "FlinkDeployment"))["containers"][0]
    env = environment(container, "FRESHRANK_STREAM_")
    unknown = []
    for name, value in env.items():
        field = name.removeprefix("FRESHRANK_STREAM_").lower()
        if field in StreamSettings.model_fields:
            monkeypatch.setenv(name, value)
        elif field not in PENDING_STREAM_FIELDS:
            unknown.append(name)
    assert not unknown, f"the chart sets variables StreamSettings does not read: {unknown}"
    settings = StreamSettings()
    assert settings.bootstrap_servers == env["FRESHRANK_STREAM_BOOTSTRAP_SERVERS"]
    assert settings.redis_address == "redis.feeds.svc.cluster.local:6379"
    assert str(settings.feast_registry) == "/var/lib/freshrank/feast/registry.db"
    assert str(settings.catalog_path) == "/var/lib/freshrank/data/catalog.parquet"
    assert settings.parallelism == 8
    assert settings.lateness_ms == 300_000
    assert settings.metrics_port == 9464
    # The pod's metrics port is scraped from outside the pod: loopback would refuse Prometheus.
    assert settings.metrics_bind_address == "0.0.0.0"


def test_sdk_kafka_settings_read_the_shared_environment(
    production: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdk.settings import KafkaSettings

    for workload in ("-api", "-candidates", "-training"):
        manifest = next(m for m in production if m["metadata"]["name"].endswith(workload))
        env = environment(pod_spec(manifest)["containers"][0], "FRESHRANK_KAFKA_")
        unknown = [n for n in env if n.removeprefix("FRESHRANK_KAFKA_").lower() not in KafkaSettings.model_fields]
        assert not unknown, unknown
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            settings = KafkaSettings()  # its validator insists on complete SASL settings
        assert settings.security_protocol == "SASL_SSL"
        assert settings.sasl_mechanism == "SCRAM-SHA-512"
        assert secret(settings.sasl_password) == SECRET_PLACEHOLDER


def test_api_settings_read_the_api_pod_environment(production: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> None:
    serving_settings = pytest.importorskip("serving.settings", reason="the feed API's settings are not merged yet")
    ServingSettings = serving_settings.ServingSettings

    container = pod_spec(one(production, "Deployment", "-api"))["containers"][0]
    env = environment(container, "FRESHRANK_SERVE_")
    unknown = [n for n in env if not fields_of(ServingSettings, n.removeprefix("FRESHRANK_SERVE_").lower())]
    assert not unknown, f"the chart sets variables ServingSettings does not read: {unknown}"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = ServingSettings()
    assert settings.environment == "production"
    assert settings.host == "0.0.0.0" and settings.port == 8000
    assert settings.keys() == [SECRET_PLACEHOLDER]
    assert settings.online_store.address == "redis.feeds.svc.cluster.local:6379"
    assert secret(settings.online_store.password) == SECRET_PLACEHOLDER
    assert settings.events.bootstrap_servers.startswith("kafka-0.kafka.internal:9093")
    assert settings.events.security_protocol == "SASL_SSL"
    assert secret(settings.events.sasl_password) == SECRET_PLACEHOLDER
    assert str(settings.model_registry) == "/var/lib/freshrank/models"
    assert str(settings.experiments_path) == "/etc/freshrank/experiments/experiments.yaml"


def test_every_role_reads_the_schema_registry_settings_the_chart_sets(
    production: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdk.schema_registry import SchemaRegistrySettings

    for kind in ("Deployment", "FlinkDeployment"):
        env = environment(pod_spec(one(production, kind))["containers"][0], "FRESHRANK_SCHEMA_REGISTRY_")
        fields = SchemaRegistrySettings.model_fields
        unknown = [n for n in env if n.removeprefix("FRESHRANK_SCHEMA_REGISTRY_").lower() not in fields]
        assert not unknown, unknown
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            settings = SchemaRegistrySettings()
        assert settings.url == "https://schema-registry.kafka.internal:8081"
        assert settings.auto_register is False  # production registers in CI with `freshrank schema register`
        assert secret(settings.basic_auth_user_info) == SECRET_PLACEHOLDER
