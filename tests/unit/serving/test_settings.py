"""Settings: env var names, type-selected backends, refusal of the default key in production."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.settings import DEFAULT_API_KEY, MemoryOnlineStore, RedisOnlineStore, ServingSettings


def test_defaults_run_against_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ServingSettings()
    assert isinstance(settings.online_store, RedisOnlineStore)
    assert settings.online_store.address == "127.0.0.1:6379" and settings.keys() == [DEFAULT_API_KEY]
    assert DEFAULT_API_KEY not in repr(settings)  # secrets never print


def test_nested_backends_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHRANK_SERVE_ONLINE_STORE__ADDRESS", "10.0.0.5:6380")
    monkeypatch.setenv("FRESHRANK_SERVE_ONLINE_STORE__USER_READS", "feast_sdk")
    monkeypatch.setenv("FRESHRANK_SERVE_EVENTS__BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("FRESHRANK_SERVE_API_KEYS", "k1, k2")
    settings = ServingSettings()
    assert isinstance(settings.online_store, RedisOnlineStore)
    assert settings.online_store.address == "10.0.0.5:6380" and settings.online_store.user_reads == "feast_sdk"
    assert settings.events.type == "kafka" and settings.events.bootstrap_servers == "kafka:9092"
    assert settings.keys() == ["k1", "k2"]
    monkeypatch.setenv("FRESHRANK_SERVE_ONLINE_STORE", '{"type": "memory"}')
    monkeypatch.delenv("FRESHRANK_SERVE_ONLINE_STORE__ADDRESS")
    monkeypatch.delenv("FRESHRANK_SERVE_ONLINE_STORE__USER_READS")
    assert isinstance(ServingSettings().online_store, MemoryOnlineStore)


def test_production_refuses_the_default_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHRANK_SERVE_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="default development key"):
        ServingSettings()
    monkeypatch.setenv("FRESHRANK_SERVE_API_KEYS", "a-long-random-key")
    assert ServingSettings().environment == "production"


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        RedisOnlineStore(adress="typo:1")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ServingSettings(api_keys=" , ")  # type: ignore[arg-type]
