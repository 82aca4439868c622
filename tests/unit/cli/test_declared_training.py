"""`freshrank train/eval --declared-features` refuse what the stream job would refuse, before any training."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from feature_repo.store import REPO_PATH

pytestmark = pytest.mark.filterwarnings("ignore:Stream feature views are experimental:RuntimeWarning")

MEDIAN_VIEW = """
from datetime import timedelta

from feast import Field, FileSource, KafkaSource, StreamFeatureView
from feast.aggregation import Aggregation
from feast.data_format import AvroFormat
from feast.types import Int64

from definitions import user

interactions = KafkaSource(
    name="interactions_stream",
    kafka_bootstrap_servers="127.0.0.1:9092",
    topic="interactions",
    timestamp_field="event_time",
    message_format=AvroFormat(schema_json=""),
    batch_source=FileSource(name="interactions_log", path="data/interactions.parquet", timestamp_field="event_time"),
)

user_watch = StreamFeatureView(
    name="user_watch",
    entities=[user],
    source=interactions,
    timestamp_field="event_time",
    ttl=timedelta(days=1),
    schema=[Field(name="median_watch_ms_600s", dtype=Int64)],
    aggregations=[
        Aggregation(column="watch_ms", function="median", time_window=timedelta(minutes=10),
                    slide_interval=timedelta(seconds=10)),
    ],
)
"""


def said(output: str) -> str:
    """The CLI's message without the line breaks rich adds at the terminal's width."""
    return " ".join(output.split())


def repo_with(tmp_path: Path, views: str | None) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(REPO_PATH, repo, ignore=shutil.ignore_patterns("__pycache__", "data"))
    if views is not None:
        (repo / "team_features.py").write_text(views)
    return repo


@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_view_the_job_would_refuse_is_named_and_nothing_is_trained(command: str, tmp_path: Path) -> None:
    repo = repo_with(tmp_path, MEDIAN_VIEW)
    args = [command, "--registry", str(tmp_path / "models"), "--declared-features", "--feature-repo", str(repo)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "user_watch" in said(result.output) and "unknown function 'median'" in said(result.output)
    assert not (tmp_path / "models").exists()


def test_a_repo_without_declared_views_or_without_feast_is_refused_with_the_way_out(tmp_path: Path) -> None:
    runner = CliRunner()
    plain = runner.invoke(app, ["train", "--declared-features", "--feature-repo", str(repo_with(tmp_path, None))])
    assert plain.exit_code == 2 and "declares no stream feature views" in said(plain.output)
    elsewhere = runner.invoke(app, ["train", "--declared-features", "--feature-repo", str(tmp_path)])
    assert elsewhere.exit_code == 2 and "is not a Feast repo" in said(elsewhere.output)
