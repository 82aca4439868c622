"""`freshrank train/eval --declared-features` refuse what the stream job would refuse, before any training."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.feast_repos import team_repo, user_watch

pytestmark = pytest.mark.filterwarnings("ignore:Stream feature views are experimental:RuntimeWarning")

MEDIAN_VIEW = user_watch(function="median", output="median_watch_ms_600s")


def said(output: str) -> str:
    """The CLI's message without the line breaks rich adds at the terminal's width."""
    return " ".join(output.split())


@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_view_the_job_would_refuse_is_named_and_nothing_is_trained(command: str, tmp_path: Path) -> None:
    repo = team_repo(tmp_path, MEDIAN_VIEW)
    args = [command, "--registry", str(tmp_path / "models"), "--declared-features", "--feature-repo", str(repo)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "user_watch" in said(result.output) and "unknown function 'median'" in said(result.output)
    assert not (tmp_path / "models").exists()


def test_a_repo_without_declared_views_or_without_feast_is_refused_with_the_way_out(tmp_path: Path) -> None:
    runner = CliRunner()
    plain = runner.invoke(app, ["train", "--declared-features", "--feature-repo", str(team_repo(tmp_path, ""))])
    assert plain.exit_code == 2 and "declares no stream feature views" in said(plain.output)
    elsewhere = runner.invoke(app, ["train", "--declared-features", "--feature-repo", str(tmp_path)])
    assert elsewhere.exit_code == 2 and "is not a Feast repo" in said(elsewhere.output)
