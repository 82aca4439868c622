"""Settings of the feed API (`freshrank serve`): the one place its FRESHRANK_SERVE_* variables are named.

Defaults run against the local stack of `freshrank up`. Backends are chosen by a
`type` field (`online_store.type`: redis | memory, `events.type`: kafka | memory);
nested fields come from variables with `__`, e.g.
`FRESHRANK_SERVE_ONLINE_STORE__ADDRESS=10.0.0.5:6379`. The environment is
`production` unless set to `dev`: production refuses to start without explicit
ingest keys or with a development key, so an API deployed by hand is not open.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from feature_repo.store import project_name
from sdk.settings import INTERACTIONS_TOPIC, KafkaConnection

DEFAULT_API_KEY = "dev-key"
DEFAULT_ADMIN_KEY = "dev-admin-key"


class RedisOnlineStore(BaseModel):
    """The Feast online store on Redis: user/item feature hashes and the candidate lists."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["redis"] = "redis"
    """Backend selector."""
    address: str = "127.0.0.1:6379"
    """host:port of Redis (the same server as Feast's `connection_string`)."""
    password: SecretStr | None = None
    """Redis AUTH password, if the server needs one."""
    db: int = Field(0, ge=0)
    """Redis database number."""
    feast_project: str = Field(default_factory=project_name)
    """Feast project name (default: feature_store.yaml's `project`): part of every Feast Redis key."""
    feast_registry: Path = Path(".freshrank/feast/registry.db")
    """Feast registry; only read when `user_reads` is `feast_sdk`."""
    user_reads: Literal["hmget", "feast_sdk"] = "hmget"
    """How the live user row is read: `hmget` = one HMGET of the user's Feast hash with Feast's own
    key and value encoding (~0.3 ms); `feast_sdk` = `FeatureStore.get_online_features` for the one
    entity (3-8 ms here), in a worker thread."""
    max_connections: int = Field(32, gt=0)
    """Connection pool bound per process."""
    connect_timeout_ms: int = Field(200, gt=0)
    """TCP connect timeout; a refused connection fails at once regardless."""


class MemoryOnlineStore(BaseModel):
    """In-process online store (test double, and a way to run the API without Redis)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["memory"] = "memory"
    """Backend selector."""


class KafkaEvents(KafkaConnection):
    """POST /v1/events forwards accepted events to Kafka through the SDK's EventPublisher.

    The connection (bootstrap servers, security protocol, SASL) is the SDK's `KafkaConnection`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    variable_prefix: ClassVar[str] = "FRESHRANK_SERVE_EVENTS__"

    type: Literal["kafka"] = "kafka"
    """Backend selector."""
    topic: str = INTERACTIONS_TOPIC
    """Topic of interaction events."""
    queue_full_timeout_s: float = Field(0.05, ge=0)
    """How long a request waits for room in the producer queue before answering 503."""
    ack_timeout_s: float = Field(5.0, gt=0)
    """How long a request waits for the broker to acknowledge its events (also the producer's delivery
    timeout); events not acknowledged by then are answered as not accepted, to be resent."""
    shutdown_flush_s: float = Field(10.0, ge=0)
    """At shutdown, how long the producer may still deliver what it holds before the process exits."""


class MemoryEvents(BaseModel):
    """Accepted events are kept in process (test double)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["memory"] = "memory"
    """Backend selector."""


class ServingSettings(BaseSettings):
    """Everything `freshrank serve` needs, from FRESHRANK_SERVE_* variables."""

    model_config = SettingsConfigDict(
        env_prefix="FRESHRANK_SERVE_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    environment: Literal["dev", "production"] = Field(
        "production",
        description="`production` (the default) needs explicit FRESHRANK_SERVE_API_KEYS; `dev` (the local stack of "
        "`freshrank up`, tests, benchmarks) falls back to the development keys.",
    )
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port.")
    workers: int = Field(
        1, ge=1, le=64, description="Server processes, each with its own ONNX session and caches (scales with cores)."
    )
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated ingest keys accepted on POST /v1/events (Bearer or X-API-Key). Required in "
        "production; `dev` falls back to `dev-key`. They do not open /v1/admin/*.",
    )
    admin_keys: SecretStr | None = Field(
        None,
        description="Comma-separated keys for /v1/admin/* (reload, model and experiment status). None in production: "
        "the admin endpoints answer 403; `dev` falls back to `dev-admin-key`. Must not repeat an ingest key.",
    )
    cors_origins: str = Field(
        "",
        description="Comma-separated web origins (https://app.example.com) whose pages may POST /v1/events "
        "from a browser (CORS); empty = none, `*` = any.",
    )

    online_store: RedisOnlineStore | MemoryOnlineStore = Field(default_factory=RedisOnlineStore)
    events: KafkaEvents | MemoryEvents = Field(default_factory=KafkaEvents)

    model_registry: Path = Field(Path(".freshrank/models"), description="Registry dir: <name>/<version>/model.onnx.")
    model_name: str = Field("ranker", description="Model name in the registry.")
    model_poll_s: float = Field(2.0, gt=0, description="How often the registry is checked for new versions.")
    experiments_path: Path | None = Field(
        None, description="A/B config (YAML or JSON): salt and arms with weights and model versions."
    )
    catalog_path: Path = Field(
        Path(".freshrank/catalog.parquet"), description="Item catalog parquet (category, created_ms, duration_ms)."
    )

    candidates_deadline_ms: float = Field(20.0, gt=0, description="Deadline of the cached-candidates read.")
    user_features_deadline_ms: float = Field(20.0, gt=0, description="Deadline of the live user-features read.")
    breaker_failures: int = Field(
        3, gt=0, description="Consecutive online-store failures that make requests skip it for breaker_open_ms."
    )
    breaker_open_ms: float = Field(1000.0, gt=0, description="How long the online store is skipped after that.")
    item_refresh_s: float = Field(30.0, gt=0, description="Item features are re-read in the background this often.")
    item_max_age_s: float = Field(3600.0, gt=0, description="Item features older than this mark answers degraded.")
    item_cache_max: int = Field(200_000, gt=0, description="Most items whose features are kept in process.")
    popular_refresh_s: float = Field(10.0, gt=0, description="Popular fallback lists are re-read this often.")

    default_k: int = Field(20, gt=0, description="Items returned when the request gives no k.")
    max_k: int = Field(200, gt=0, description="Largest k a request may ask for.")
    max_candidates: int = Field(1000, gt=0, description="Most candidates a request may send.")
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest request body, in bytes.")
    max_events_per_batch: int = Field(500, gt=0, description="Most events in one POST /v1/events.")
    max_in_flight: int = Field(
        64, gt=0, description="Requests one worker handles at once; beyond, 503 `overloaded` with Retry-After."
    )
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Bound on any request (504 beyond). Ranking stages have their own, far shorter deadlines; "
        "must exceed events.ack_timeout_s + 1 (an events request waits for Kafka's acknowledgement).",
    )

    exploration_share: float = Field(0.1, ge=0, le=1, description="Share of the k slots for exploring new items.")
    new_item_max_age_s: float = Field(86_400.0, gt=0, description="An item younger than this may be explored.")
    max_run_per_category: int = Field(2, gt=0, description="Most consecutive items of one category.")
    filter_seen: bool = Field(True, description="Drop items in the user's recent history (user_last_item_ids).")

    @model_validator(mode="after")
    def _explicit_keys_outside_dev(self) -> ServingSettings:
        if self.environment != "dev":
            if self.api_keys is None:
                raise ValueError(
                    "refusing to start: set FRESHRANK_SERVE_API_KEYS (comma-separated ingest keys for /v1/events), "
                    "or FRESHRANK_SERVE_ENVIRONMENT=dev for a local run"
                )
            if {DEFAULT_API_KEY, DEFAULT_ADMIN_KEY} & {*self.keys(), *self.admin_key_list()}:
                raise ValueError(
                    "refusing to start: FRESHRANK_SERVE_API_KEYS or FRESHRANK_SERVE_ADMIN_KEYS still holds a default "
                    "development key; set your own keys for environment=production"
                )
        if not self.keys():
            raise ValueError("FRESHRANK_SERVE_API_KEYS must hold at least one key")
        if set(self.keys()) & set(self.admin_key_list()):
            raise ValueError("a key is both an ingest key and an admin key: FRESHRANK_SERVE_ADMIN_KEYS must differ")
        if isinstance(self.events, KafkaEvents) and self.request_timeout_s <= self.events.ack_timeout_s + 1:
            raise ValueError("request_timeout_s must exceed events.ack_timeout_s + 1 s")
        if self.default_k > self.max_k:
            raise ValueError("default_k must not exceed max_k")
        return self

    def origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    def keys(self) -> list[str]:
        """Ingest keys (POST /v1/events)."""
        if self.api_keys is None:
            return [DEFAULT_API_KEY] if self.environment == "dev" else []
        return _split(self.api_keys)

    def admin_key_list(self) -> list[str]:
        """Admin keys (/v1/admin/*); empty = the admin endpoints are disabled."""
        if self.admin_keys is None:
            return [DEFAULT_ADMIN_KEY] if self.environment == "dev" else []
        return _split(self.admin_keys)


def _split(keys: SecretStr) -> list[str]:
    return [key.strip() for key in keys.get_secret_value().split(",") if key.strip()]
