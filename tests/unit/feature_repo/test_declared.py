"""Feast's own StreamFeatureView objects read into drafts, and what freshrank makes of them (no services)."""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from feast import Entity, Field, FileSource, KafkaSource, StreamFeatureView
from feast.aggregation import Aggregation
from feast.data_format import AvroFormat, JsonFormat
from feast.types import Float64, Int64
from feast.value_type import ValueType

from feature_repo.declared import check, draft_of, drafts_from_repo, load_declared
from features.declared import DeclaredView
from tests.feast_repos import team_repo, user_watch

USER = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
SESSION = Entity(name="session", join_keys=["session_id"], value_type=ValueType.STRING)
ENTITIES = {"user": USER, "session": SESSION}


def source(message_format: Any = None, topic: str = "interactions") -> KafkaSource:
    return KafkaSource(
        name="interactions_stream",
        kafka_bootstrap_servers="127.0.0.1:9092",
        topic=topic,
        timestamp_field="event_time",
        message_format=message_format or AvroFormat(schema_json=""),
        batch_source=FileSource(name="log", path="log.parquet", timestamp_field="event_time"),
    )


def view(**changes: Any) -> StreamFeatureView:
    arguments: dict[str, Any] = {
        "name": "user_watch",
        "entities": [USER],
        "source": source(),
        "timestamp_field": "event_time",
        "schema": [Field(name="sum_watch_ms_600s", dtype=Int64), Field(name="mean_watch_ms_60s", dtype=Float64)],
        "aggregations": [
            Aggregation(column="watch_ms", function="sum", time_window=timedelta(minutes=10)),
            Aggregation(
                column="watch_ms",
                function="mean",
                time_window=timedelta(minutes=1),
                slide_interval=timedelta(seconds=5),
            ),
        ],
    }
    arguments.update(changes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Feast: "Stream feature views are experimental"
        return StreamFeatureView(**arguments)


def test_feasts_objects_become_a_view_with_feasts_names_and_windows() -> None:
    draft = draft_of(view(), ENTITIES)
    assert draft.join_keys == (("user_id", "STRING"),)
    assert [(a.name, a.window_ms, a.slide_ms) for a in draft.aggregations] == [
        ("sum_watch_ms_600s", 600_000, 600_000),  # Feast's default slide: the window (tumbling)
        ("mean_watch_ms_60s", 60_000, 5_000),
    ]
    (accepted,), refused = check([draft], "interactions")
    assert refused == [] and isinstance(accepted, DeclaredView)
    assert [(a.window.n_buckets, a.dtype) for a in accepted.aggregations] == [(1, "int64"), (12, "float64")]


def _only_clicks(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["event_type"] == "click"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"udf": _only_clicks, "mode": "pandas"}, "udf"),
        ({"source": source(JsonFormat(schema_json=""))}, "source.message_format"),
        ({"source": source(topic="clicks")}, "source.topic"),
        ({"entities": [SESSION]}, "entities"),
    ],
    ids=["pandas-udf", "json", "other-topic", "other-entity"],
)
def test_what_the_job_cannot_run_is_refused_from_real_feast_objects(changes: dict[str, Any], field: str) -> None:
    accepted, refused = check([draft_of(view(**changes), ENTITIES)], "interactions")
    assert accepted == [] and [r.field for r in refused] == [field], refused


def test_no_registry_yet_means_no_declared_views(tmp_path: Path) -> None:
    # `freshrank stream` before any `feast apply`: the built-ins run, nothing is refused.
    assert load_declared("127.0.0.1:1", tmp_path / "missing" / "registry.db", "interactions") == ([], [])


def test_two_repos_with_the_same_file_names_are_each_read_as_they_are(tmp_path: Path) -> None:
    one = team_repo(tmp_path / "one", user_watch("user_watch"))
    two = team_repo(tmp_path / "two", user_watch("user_watch_v2"))
    assert [draft.name for draft in drafts_from_repo(one)] == ["user_watch"]
    assert [draft.name for draft in drafts_from_repo(two)] == ["user_watch_v2"]  # not one's cached module
    assert [draft.name for draft in drafts_from_repo(one)] == ["user_watch"]
