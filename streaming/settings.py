"""Settings of the stream job (`freshrank stream`), from FRESHRANK_STREAM_* variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sdk.settings import DLQ_TOPIC, INTERACTIONS_TOPIC, KafkaConfig, KafkaConnection


def split_problem(task_managers: int, split_operators: bool) -> str | None:
    """Why the job cannot run with its operators split on a local cluster of `task_managers` one-slot
    TaskManagers (0: the mini-cluster), or None. The one statement of the rule: the stream and stack
    settings, `freshrank stream`, `freshrank up` and the benchmark all ask it."""
    if not split_operators or (task_managers >= 2 and task_managers % 2 == 0):
        return None
    return (
        f"--split-operators needs an even --task-managers, at least 2 (got {task_managers}): one TaskManager reads "
        "and computes user features, another computes item features; add --task-managers 2 "
        "(FRESHRANK_STREAM_TASK_MANAGERS). In one process the operators share one interpreter: no gain"
    )


class StreamSettings(BaseSettings, KafkaConnection):
    """Everything the PyFlink job needs. Defaults run against the local stack of `freshrank up`."""

    model_config = SettingsConfigDict(env_prefix="FRESHRANK_STREAM_", frozen=True, extra="forbid")

    topic: str = Field(INTERACTIONS_TOPIC, description="Topic of interaction events.")
    dlq_topic: str = Field(DLQ_TOPIC, description="Where undecodable/invalid records go, reason in a header.")
    consumer_group: str = Field(
        "freshrank-stream", description="Group id the reader commits offsets under, for lag monitoring only."
    )
    redis_address: str = Field("127.0.0.1:6379", description="Redis of the Feast online store (host:port).")
    redis_password: SecretStr | None = Field(None, description="Redis password (AUTH); never printed.")
    feast_registry: Path = Field(Path(".freshrank/feast/registry.db"), description="Feast registry path or URI.")
    catalog_path: Path | None = Field(
        None, description="Item catalog parquet (item_id, category); categories feed user affinity."
    )
    checkpoint_dir: Path = Field(
        Path(".freshrank/checkpoints"), description="Local dir of Flink checkpoints (any Flink FS URI in production)."
    )
    checkpoint_interval_ms: int = Field(2000, gt=0)
    parallelism: int = Field(1, gt=0, description="Parallelism of the readers and feature operators.")
    task_managers: int = Field(
        0,
        ge=0,
        description="0: run in a local mini-cluster inside `freshrank stream` (one JVM, one interpreter). N >= 1: "
        "start a local standalone Flink cluster of a JobManager and N TaskManagers (one slot, one JVM and one "
        "Python interpreter each) and run the job on it at parallelism N; TaskManager i serves /metrics on "
        "metrics_port + i.",
    )
    split_operators: bool = Field(
        False,
        description="Run the item operator in a slot sharing group of its own, so that with one slot per "
        "TaskManager it gets TaskManagers (JVMs and Python interpreters, GILs) other than the readers' and user "
        "features'. Locally it needs an even task_managers, N: the job then runs at parallelism N / 2. Under the "
        "Flink operator the job needs 2 x parallelism slots; give each TaskManager one slot, or the two halves "
        "may share an interpreter again.",
    )
    cluster_dir: Path = Field(
        Path(".freshrank/flink-cluster"),
        description="Config, pid and temporary files of the local standalone cluster (task_managers >= 1).",
    )
    ticks_per_second: int = Field(
        20, gt=0, description="Rate of the tick source; each tick polls every partition once (adds up to 1/rate s)."
    )
    max_records_per_poll: int = Field(2000, gt=0, description="Records one tick reads from one partition, at most.")
    item_buckets: int | None = Field(
        None,
        gt=0,
        description="Flink keys of the item operator; items are spread over them by hash of item_id. Unset: the "
        "count the job's state was built with, or 4 for new state (streaming.partition.DEFAULT_ITEM_BUCKETS). "
        "The item operator's parallelism cannot usefully exceed it.",
    )
    entity_cache_size: int = Field(
        100_000,
        gt=0,
        description="Decoded aggregates kept in memory per operator instance, shared by its keys (state holds all).",
    )
    max_ingest_skew_ms: int = Field(
        60_000,
        ge=0,
        description="Event time ahead of the record timestamp by more than this is clamped (clock-skewed clients).",
    )
    max_dlq_record_bytes: int = Field(
        512 * 1024, gt=1024, description="A refused record larger than this is written to the DLQ cut to this size."
    )
    consumer_queue_kbytes: int = Field(
        4096, gt=0, description="Prefetch bound of each partition consumer (librdkafka queued.max.messages.kbytes)."
    )
    partition_refresh_s: float = Field(10.0, gt=0, description="How often new partitions are looked for.")
    lateness_ms: int = Field(
        300_000,
        ge=0,
        description="Per-user lateness bound: an event older than the user's newest admitted event by more is late.",
    )
    flush_interval_ms: int = Field(100, gt=0, description="A key emits at most one row per interval (coalescing).")
    buffer_timeout_ms: int = Field(
        5,
        ge=-1,
        description="Flink flushes a partly filled network buffer between operators after this long (Flink's "
        "default, 100 ms, added up to 100 ms per hop: ticks, polls and item batches cross three). -1: only when full.",
    )
    metrics_port: int = Field(9464, ge=0, description="Prometheus /metrics of the job; 0 disables.")
    flink_log_dir: Path = Field(
        Path(".freshrank/logs/flink"),
        description="Where the local mini-cluster writes Flink's log, operators' log lines included (FLINK_LOG_DIR).",
    )
    metrics_bind_address: str = Field(
        "127.0.0.1",
        description="Address /metrics listens on: loopback locally; 0.0.0.0 in a pod so Prometheus can scrape it.",
    )
    freshness_window_s: float = Field(60.0, gt=0, description="Window of the freshness p50/p99 gauges.")
    flink_ui_port: int = Field(
        8081,
        ge=0,
        le=65535,
        description="Port of the local mini-cluster's Flink dashboard and REST API (rest.port); 0 leaves it to "
        "Flink, which then binds a random port that nothing announces (still on flink_ui_bind_address).",
    )
    flink_ui_bind_address: str = Field(
        "127.0.0.1", description="Address the Flink dashboard listens on (rest.bind-address): loopback by default."
    )

    @model_validator(mode="after")
    def _split_needs_pairs(self) -> StreamSettings:
        # task_managers 0 with the split is the Flink operator's case (job_main); run() refuses the mini-cluster.
        problem = split_problem(self.task_managers, self.split_operators) if self.task_managers else None
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def cluster_parallelism(self) -> int:
        """Parallelism of the job on a local cluster of `task_managers` one-slot TaskManagers."""
        return self.task_managers // 2 if self.split_operators else self.task_managers

    def kafka_config(self) -> KafkaConfig:
        """librdkafka properties shared by the job's consumers, admin client and DLQ producer."""
        return {**self.connection_config(), "log_level": 3}

    def redis_connection_string(self) -> str:
        """Feast's redis connection_string: host:port, plus ",password=..." when Redis wants AUTH."""
        if self.redis_password is None:
            return self.redis_address
        return f"{self.redis_address},password={self.redis_password.get_secret_value()}"
