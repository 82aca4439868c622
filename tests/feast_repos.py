"""A copy of freshrank's Feast repo with a team's file of declared stream feature views, as a team keeps one."""

from __future__ import annotations

import shutil
from pathlib import Path

from feature_repo.store import REPO_PATH

SOURCE = """
from datetime import timedelta

from feast import Field, FileSource, KafkaSource, StreamFeatureView
from feast.aggregation import Aggregation
from feast.data_format import AvroFormat
from feast.types import Float64, Int64

from definitions import item, user

interactions = KafkaSource(
    name="interactions_stream",
    kafka_bootstrap_servers="127.0.0.1:9092",
    topic="{topic}",
    timestamp_field="event_time",
    message_format=AvroFormat(schema_json=""),
    batch_source=FileSource(name="interactions_log", path="data/interactions.parquet", timestamp_field="event_time"),
)
"""
"""The team file's head: the imports and the `KafkaSource` on `{topic}` its views read."""


def team_repo(directory: Path, views: str, topic: str = "interactions") -> Path:
    """`directory/repo`: freshrank's feature repo plus `team_features.py` (SOURCE on `topic`, then `views`)."""
    repo = directory / "repo"
    shutil.copytree(REPO_PATH, repo, ignore=shutil.ignore_patterns("__pycache__", "data"))
    (repo / "team_features.py").write_text(SOURCE.format(topic=topic) + views)
    return repo
