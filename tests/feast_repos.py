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


def user_watch(name: str = "user_watch", function: str = "sum", output: str = "watch_seconds_10m") -> str:
    """A user view of one aggregation of `watch_ms` over 10 minutes in 10 s buckets, named `output`."""
    return f"""
{name} = StreamFeatureView(
    name="{name}",
    entities=[user],
    source=interactions,
    timestamp_field="event_time",
    ttl=timedelta(days=1),
    schema=[Field(name="{output}", dtype=Int64)],
    aggregations=[
        Aggregation(column="watch_ms", function="{function}", time_window=timedelta(minutes=10),
                    slide_interval=timedelta(seconds=10), name="{output}"),
    ],
)
"""


ITEM_CLICKERS = """
item_clickers = StreamFeatureView(
    name="item_clickers",
    entities=[item],
    source=interactions,
    timestamp_field="event_time",
    ttl=timedelta(days=1),
    tags={"freshrank.event_types": "click"},
    schema=[Field(name="count_distinct_user_id_1800s", dtype=Int64)],
    aggregations=[
        Aggregation(column="user_id", function="count_distinct", time_window=timedelta(minutes=30),
                    slide_interval=timedelta(seconds=30)),
    ],
)
"""
"""An item view: distinct users who clicked the item in the last 30 minutes (in 30 s buckets)."""


def team_repo(directory: Path, views: str, topic: str = "interactions") -> Path:
    """`directory/repo`: freshrank's feature repo plus `team_features.py` (SOURCE on `topic`, then `views`)."""
    repo = directory / "repo"
    shutil.copytree(REPO_PATH, repo, ignore=shutil.ignore_patterns("__pycache__", "data"))
    (repo / "team_features.py").write_text(SOURCE.format(topic=topic) + views)
    return repo
