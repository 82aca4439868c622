"""A Confluent-compatible schema registry, through confluent-kafka's own `SchemaRegistryClient`.

Configured by FRESHRANK_SCHEMA_REGISTRY_* variables (one set for the SDK, the HTTP
collector and the stream job), with the client's own option names for auth and
TLS. Without a URL everything uses the file registry in `features/schemas/`.

Producers (`producer_codec`) register our newest schema under the subject
`<topic>-value` (Confluent's TopicNameStrategy), or only look it up when
auto-registration is off, and write the id the registry gives. Consumers
(`consumer_codec`) fetch any writer schema id they meet; `features.codec`
checks it against our reader schema and caches the answer. This module owns
the network side only: which calls, which errors mean "not there" (a bad
record) and which mean "cannot ask now" (`SchemaLookupError`, retry).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from features.codec import SUBJECT, EventCodec, FetchedSchema, FetchedSchemas, SchemaLookupError, SchemaRegistry
from sdk.errors import SDKError

# Registry error codes (Confluent REST API): subject / version / schema not found.
NOT_FOUND_CODES = {40401, 40402, 40403}


class SchemaRegistryUnavailable(SDKError):
    """The schema registry could not be asked (unreachable, auth refused, 5xx); nothing was sent."""


class SchemaRegistryRefused(SDKError):
    """The registry answered no: the schema is incompatible, or is not registered and auto-register is off."""


class SchemaRegistrySettings(BaseSettings):
    """Where the Confluent-compatible schema registry is; no URL = the file registry of the repo."""

    model_config = SettingsConfigDict(env_prefix="FRESHRANK_SCHEMA_REGISTRY_", frozen=True, extra="forbid")

    url: str | None = Field(
        None, description="Registry URL(s), comma-separated (client option `url`); unset = file registry."
    )
    basic_auth_user_info: SecretStr | None = Field(
        None, description="`user:password` for HTTP basic auth (client option `basic.auth.user.info`)."
    )
    ssl_ca_location: Path | None = Field(None, description="CA bundle that signed the registry's certificate.")
    ssl_certificate_location: Path | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_key_location: Path | None = Field(None, description="Client private key (needs the certificate).")
    ssl_key_password: SecretStr | None = Field(None, description="Password of the client private key.")
    timeout_s: float = Field(10.0, gt=0, description="HTTP timeout of one registry request.")
    auto_register: bool = Field(
        True,
        description="Producers register our schema if the subject lacks it; false = look up only "
        "(production: register in CI with `freshrank schema register`).",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def client_config(self) -> dict[str, Any]:
        """Options of confluent_kafka.schema_registry.SchemaRegistryClient."""
        if not self.url:
            raise ValueError("no schema registry URL is configured (FRESHRANK_SCHEMA_REGISTRY_URL)")
        config: dict[str, Any] = {"url": self.url, "timeout": self.timeout_s}
        if self.basic_auth_user_info is not None:
            config["basic.auth.user.info"] = self.basic_auth_user_info.get_secret_value()
        if self.ssl_ca_location is not None:
            config["ssl.ca.location"] = str(self.ssl_ca_location)
        if self.ssl_certificate_location is not None:
            config["ssl.certificate.location"] = str(self.ssl_certificate_location)
        if self.ssl_key_location is not None:
            config["ssl.key.location"] = str(self.ssl_key_location)
        if self.ssl_key_password is not None:
            config["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return config


def subject_for(topic: str) -> str:
    """Confluent's TopicNameStrategy for record values."""
    return f"{topic}-value"


def connect(settings: SchemaRegistrySettings) -> Any:
    """A SchemaRegistryClient (no request is made yet)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient(settings.client_config())


def _is_not_found(error: Exception) -> bool:
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    return isinstance(error, SchemaRegistryError) and (
        error.error_code in NOT_FOUND_CODES or error.http_status_code == 404
    )


def _describe(error: Exception) -> str:
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    if isinstance(error, SchemaRegistryError):
        return f"HTTP {error.http_status_code}, error code {error.error_code}: {error.error_message}"
    return f"{type(error).__name__}: {error}"


def fetcher(client: Any) -> Any:
    """The `SchemaFetch` of features.codec over a client: id -> schema, None if unknown, else SchemaLookupError."""

    def fetch(schema_id: int) -> FetchedSchema | None:
        try:
            schema = client.get_schema(schema_id)
        except Exception as error:  # the client raises SchemaRegistryError and httpx transport errors
            if _is_not_found(error):
                return None
            raise SchemaLookupError(f"schema registry lookup of id {schema_id} failed: {_describe(error)}") from error
        return FetchedSchema(schema.schema_type or "AVRO", schema.schema_str)

    return fetch


def our_schema(subject: str = SUBJECT) -> Any:
    """Our newest schema (the one in the repo) as a confluent-kafka `Schema`."""
    from confluent_kafka.schema_registry import Schema

    return Schema(json.dumps(SchemaRegistry().latest(subject).definition), "AVRO")


def schema_id_for(client: Any, subject: str, register: bool) -> int:
    """The registry's id of our newest schema under `subject`: registered if needed (and allowed)."""
    schema = our_schema()
    try:
        if register:
            return int(client.register_schema(subject, schema))
        return int(client.lookup_schema(subject, schema).schema_id)
    except Exception as error:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        if _is_not_found(error):
            raise SchemaRegistryRefused(
                f"our schema is not registered under {subject} and auto-registration is off: "
                "run `freshrank schema register` (or set FRESHRANK_SCHEMA_REGISTRY_AUTO_REGISTER=true)"
            ) from error
        if isinstance(error, SchemaRegistryError) and error.http_status_code in (409, 422):
            raise SchemaRegistryRefused(
                f"the registry refused our schema under {subject}: {_describe(error)}"
            ) from error
        raise SchemaRegistryUnavailable(f"schema registry request failed: {_describe(error)}") from error


def producer_codec(settings: SchemaRegistrySettings, topic: str) -> EventCodec:
    """Codec that writes the registry's id of our schema (file registry id without a URL)."""
    if not settings.enabled:
        return EventCodec()
    client = connect(settings)
    writer_id = schema_id_for(client, subject_for(topic), register=settings.auto_register)
    return EventCodec(FetchedSchemas(fetcher(client), SchemaRegistry().latest()), writer_id=writer_id)


def consumer_codec(settings: SchemaRegistrySettings) -> EventCodec:
    """Codec that decodes records of any writer schema id the registry knows (file registry without a URL).

    No request is made here; each new id is fetched when first met, and a registry
    that cannot be asked raises `features.codec.SchemaLookupError` from `decode`.
    """
    if not settings.enabled:
        return EventCodec()
    return EventCodec(FetchedSchemas(fetcher(connect(settings)), SchemaRegistry().latest()))
