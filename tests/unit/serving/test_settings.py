"""Settings: env var names, type-selected backends, refusal of the default key in production."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.settings import DEFAULT_ADMIN_KEY, DEFAULT_API_KEY, MemoryOnlineStore, RedisOnlineStore, ServingSettings


def test_dev_defaults_run_against_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHRANK_SERVE_ENVIRONMENT", "dev")
    settings = ServingSettings()
    assert isinstance(settings.online_store, RedisOnlineStore)
    assert settings.online_store.address == "127.0.0.1:6379" and settings.keys() == [DEFAULT_API_KEY]
    assert settings.admin_key_list() == [DEFAULT_ADMIN_KEY]
    monkeypatch.setenv("FRESHRANK_SERVE_API_KEYS", "secret-ingest")
    assert "secret-ingest" not in repr(ServingSettings())  # secrets never print


def test_production_is_the_default_and_needs_explicit_ingest_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="set FRESHRANK_SERVE_API_KEYS"):
        ServingSettings()
    monkeypatch.setenv("FRESHRANK_SERVE_API_KEYS", "ingest-1")
    settings = ServingSettings()
    assert settings.environment == "production" and settings.keys() == ["ingest-1"]
    assert settings.admin_key_list() == []  # admin endpoints off unless keys are given
    monkeypatch.setenv("FRESHRANK_SERVE_ADMIN_KEYS", "ingest-1")
    with pytest.raises(ValidationError, match="both an ingest key and an admin key"):
        ServingSettings()
    monkeypatch.setenv("FRESHRANK_SERVE_ADMIN_KEYS", DEFAULT_ADMIN_KEY)
    with pytest.raises(ValidationError, match="default development key"):
        ServingSettings()


def test_nested_backends_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHRANK_SERVE_ONLINE_STORE__ADDRESS", "10.0.0.5:6380")
    monkeypatch.setenv("FRESHRANK_SERVE_ONLINE_STORE__USER_READS", "feast_sdk")
    monkeypatch.setenv("FRESHRANK_SERVE_EVENTS__BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("FRESHRANK_SERVE_API_KEYS", "k1, k2")
    monkeypatch.setenv("FRESHRANK_SERVE_ADMIN_KEYS", "a1")
    settings = ServingSettings()
    assert isinstance(settings.online_store, RedisOnlineStore)
    assert settings.online_store.address == "10.0.0.5:6380" and settings.online_store.user_reads == "feast_sdk"
    assert settings.events.type == "kafka" and settings.events.bootstrap_servers == "kafka:9092"
    assert settings.keys() == ["k1", "k2"] and settings.admin_key_list() == ["a1"]
    monkeypatch.setenv("FRESHRANK_SERVE_ONLINE_STORE", '{"type": "memory"}')
    monkeypatch.delenv("FRESHRANK_SERVE_ONLINE_STORE__ADDRESS")
    monkeypatch.delenv("FRESHRANK_SERVE_ONLINE_STORE__USER_READS")
    assert isinstance(ServingSettings().online_store, MemoryOnlineStore)


def test_production_refuses_the_default_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHRANK_SERVE_ENVIRONMENT", "production")
    monkeypatch.setenv("FRESHRANK_SERVE_API_KEYS", f"mine,{DEFAULT_API_KEY}")
    with pytest.raises(ValidationError, match="default development key"):
        ServingSettings()
    monkeypatch.setenv("FRESHRANK_SERVE_API_KEYS", "a-long-random-key")
    assert ServingSettings().environment == "production"


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        RedisOnlineStore(adress="typo:1")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ServingSettings(environment="dev", api_keys=" , ")  # type: ignore[arg-type]
