"""Kafka settings: the connection model every Kafka client of freshrank shares, and the SDK's own settings.

`KafkaConnection` (bootstrap servers, security protocol, SASL) is declared here once; the SDK
(`FRESHRANK_KAFKA_*`), the stream job (`FRESHRANK_STREAM_*`) and the feed API's event sink
(`FRESHRANK_SERVE_EVENTS__*`) inherit it, so each keeps its own variable names. The topic names are
here too: the SDK writes them, the job reads them, the API forwards to them.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Self

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from features.partitioning import LIBRDKAFKA_PARTITIONER

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
INTERACTIONS_TOPIC = "interactions"
"""Topic of interaction events (key = user_id)."""
DLQ_TOPIC = "interactions.dlq"
"""Where the stream job puts records it refuses, the reason in a header."""

KafkaConfig = dict[str, str | int | float | bool]


class KafkaConnection(BaseModel):
    """Where a Kafka client connects and how it authenticates; a SASL protocol needs all three SASL fields."""

    variable_prefix: ClassVar[str] = ""
    """Prefix of the variables that set these fields, named in errors (a `BaseSettings`'s `env_prefix` wins)."""

    bootstrap_servers: str = Field(DEFAULT_BOOTSTRAP, description="Comma-separated host:port list.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="Kafka SASL mechanism (SASL_* protocols)."
    )
    sasl_username: str | None = Field(None, description="Kafka SASL user.")
    sasl_password: SecretStr | None = Field(None, description="Kafka SASL password; never printed.")

    @model_validator(mode="after")
    def _sasl_complete(self) -> Self:
        if self.security_protocol.startswith("SASL_") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            prefix = str(self.model_config.get("env_prefix") or self.variable_prefix)
            raise ValueError(
                f"security_protocol {self.security_protocol} needs {prefix}SASL_MECHANISM, "
                f"{prefix}SASL_USERNAME and {prefix}SASL_PASSWORD"
            )
        return self

    def connection_config(self) -> KafkaConfig:
        """librdkafka properties of the connection: servers, protocol and SASL credentials."""
        config: KafkaConfig = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.sasl_mechanism and self.sasl_username and self.sasl_password:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password.get_secret_value()
        return config


class KafkaSettings(BaseSettings, KafkaConnection):
    """Where and how the SDK publishes. Defaults reach the local stack started by `freshrank up`."""

    model_config = SettingsConfigDict(env_prefix="FRESHRANK_KAFKA_", frozen=True, extra="forbid")

    topic: str = Field(INTERACTIONS_TOPIC, description="Topic events are published to.")
    client_id: str = "freshrank-sdk"
    linger_ms: int = Field(
        20, ge=0, description="How long the producer waits to fill a batch (fewer, larger batches cost brokers less)."
    )
    batch_size_bytes: int = Field(256 * 1024, gt=0)
    queue_max_messages: int = Field(100_000, gt=0, description="Local queue bound; beyond it publish() blocks.")
    queue_full_timeout_s: float = Field(
        10.0, ge=0, description="How long publish() waits for queue space before PublisherBackpressure."
    )
    delivery_timeout_ms: int = Field(120_000, gt=0, description="Give up on an event after this long.")

    def client_config(self) -> KafkaConfig:
        """librdkafka properties shared by producers, consumers and admin clients."""
        return {**self.connection_config(), "client.id": self.client_id}

    def producer_config(self) -> KafkaConfig:
        return {
            **self.client_config(),
            # Idempotence implies acks=all and bounded in-flight requests: no
            # duplicates or reordering per partition on retries.
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.linger_ms,
            "batch.size": self.batch_size_bytes,
            "queue.buffering.max.messages": self.queue_max_messages,
            "delivery.timeout.ms": self.delivery_timeout_ms,
            "compression.type": "lz4",
            # Kafka's default partitioner (murmur2), as Java clients use it: a user's events land in
            # the partition the stream job expects whichever client wrote them (it checks).
            "partitioner": LIBRDKAFKA_PARTITIONER,
        }
