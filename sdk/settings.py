"""Settings of the client event SDK, read from FRESHRANK_KAFKA_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from features.partitioning import LIBRDKAFKA_PARTITIONER

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


class KafkaSettings(BaseSettings):
    """Where and how the SDK publishes. Defaults reach the local stack started by `freshrank up`."""

    model_config = SettingsConfigDict(env_prefix="FRESHRANK_KAFKA_", frozen=True, extra="forbid")

    bootstrap_servers: str = Field(DEFAULT_BOOTSTRAP, description="Comma-separated host:port list.")
    topic: str = Field("interactions", description="Topic events are published to.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    client_id: str = "freshrank-sdk"
    linger_ms: int = Field(5, ge=0, description="How long the producer waits to fill a batch.")
    batch_size_bytes: int = Field(256 * 1024, gt=0)
    queue_max_messages: int = Field(100_000, gt=0, description="Local queue bound; beyond it publish() blocks.")
    queue_full_timeout_s: float = Field(
        10.0, ge=0, description="How long publish() waits for queue space before PublisherBackpressure."
    )
    delivery_timeout_ms: int = Field(120_000, gt=0, description="Give up on an event after this long.")

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs FRESHRANK_KAFKA_SASL_MECHANISM, "
                "FRESHRANK_KAFKA_SASL_USERNAME and FRESHRANK_KAFKA_SASL_PASSWORD"
            )
        return self

    def client_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka properties shared by producers, consumers and admin clients."""
        config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        if self.sasl_mechanism and self.sasl_username and self.sasl_password:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password.get_secret_value()
        return config

    def producer_config(self) -> dict[str, str | int | float | bool]:
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
