"""Settings of the embedded local stack (`freshrank up`) and its error type.

Read from FRESHRANK_* variables by the CLI; tests and benchmarks build them with values.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streaming.settings import split_problem


class StackError(Exception):
    """The local stack cannot start or be reached; the message says how to fix it."""


class StackSettings(BaseSettings):
    """Settings of the embedded local stack (`freshrank up`), from FRESHRANK_* variables."""

    model_config = SettingsConfigDict(env_prefix="FRESHRANK_", frozen=True, extra="ignore")

    state_dir: Path = Field(Path(".freshrank"), description="Logs, data and state.json of the local stack.")
    host: str = Field("127.0.0.1", description="IPv4 address every local service listens on.")
    broker_port: int = Field(9092, ge=0, le=65535, description="Kafka port; 0 picks a free one.")
    redis_port: int = Field(6379, ge=0, le=65535, description="Redis port; 0 picks a free one.")
    stream_metrics_port: int = Field(9464, ge=0, le=65535, description="Stream job /metrics port; 0: free.")
    stream_flink_ui_port: int = Field(
        8081, ge=0, le=65535, description="Flink dashboard and REST API of the stream job; 0: free."
    )
    stream_task_managers: int = Field(
        0,
        ge=0,
        description="FRESHRANK_STREAM_TASK_MANAGERS: 0 runs the stream job in a mini-cluster; N >= 1 on a local "
        "standalone cluster of N TaskManagers (metrics on the stream port + 0..N-1).",
    )
    stream_split_operators: bool = Field(
        False,
        description="FRESHRANK_STREAM_SPLIT_OPERATORS: with an even stream_task_managers N, item features on N/2 "
        "TaskManagers of their own and the job at parallelism N/2 (README, 'Scale-out').",
    )
    serve_port: int = Field(8000, ge=0, le=65535, description="Feed API port (FRESHRANK_SERVE_PORT); 0: free.")
    partitions: int = Field(8, gt=0, description="Partitions of the interactions topic.")

    @model_validator(mode="after")
    def _split_needs_a_cluster(self) -> StackSettings:
        problem = split_problem(self.stream_task_managers, self.stream_split_operators)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"
