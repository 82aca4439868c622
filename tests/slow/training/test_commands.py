"""`freshrank train` registers a model that `freshrank eval --model-version` then scores: the README's commands."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from cli.main import app
from features.ranking import RANKER_FEATURES
from registry.layout import load
from tests.feast_repos import ITEM_CLICKERS, team_repo, user_watch

WORLD = ["--seconds", "3600", "--rate", "10", "--users", "300", "--items", "200", "--seed", "2"]


def test_train_registers_and_eval_reports_every_scorer(tmp_path: Path) -> None:
    runner = CliRunner()
    registry = tmp_path / "models"
    trained = runner.invoke(app, ["train", *WORLD, "--registry", str(registry)])
    assert trained.exit_code == 0, trained.output
    model = load(registry)
    assert model.metadata.version == 1 and model.metadata.spec.feature_names == RANKER_FEATURES
    assert model.metadata.spec.extra["parity_max_abs_diff"] < 1e-5
    window = model.metadata.spec.training_window
    assert window.start_ms < window.end_ms

    report_path = tmp_path / "eval.json"
    evaluated = runner.invoke(
        app, ["eval", *WORLD, "--registry", str(registry), "--model-version", "1", "--json", str(report_path)]
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(report_path.read_text())
    for metric in ("ndcg@10", "auc"):
        assert set(report[metric]) >= {"popularity", "ranker_live", "ranker_stale", "ranker_no_user", "oracle"}
        assert report[metric]["oracle"] is not None
    # Same world and split: the registered model's test metrics are what eval measures.
    assert report["auc"]["ranker_live"] == model.metadata.spec.metrics["auc"]["ranker_live"]


TEAM_VIEWS = user_watch() + ITEM_CLICKERS
DECLARED = ("item_clickers:count_distinct_user_id_1800s", "user_watch:watch_seconds_10m")  # views by name


@pytest.mark.filterwarnings("ignore:Stream feature views are experimental:RuntimeWarning")
def test_train_with_declared_features_registers_them_as_inputs_and_eval_needs_the_same(tmp_path: Path) -> None:
    runner = CliRunner()
    registry, repo = tmp_path / "models", team_repo(tmp_path, TEAM_VIEWS)
    declared = ["--declared-features", "--feature-repo", str(repo)]
    trained = runner.invoke(app, ["train", *WORLD, "--registry", str(registry), *declared])
    assert trained.exit_code == 0, trained.output
    model = load(registry)
    assert model.metadata.spec.feature_names == (*RANKER_FEATURES, *DECLARED)
    assert model.metadata.spec.extra["parity_max_abs_diff"] < 1e-5
    session = ort.InferenceSession(str(model.model_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1] == len(RANKER_FEATURES) + len(DECLARED)

    report_path = tmp_path / "eval.json"
    evaluated = runner.invoke(
        app,
        ["eval", *WORLD, "--registry", str(registry), "--model-version", "1", "--json", str(report_path), *declared],
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(report_path.read_text())
    assert report["auc"]["ranker_live"] == model.metadata.spec.metrics["auc"]["ranker_live"]

    # The input list is the model's: scoring it without the declared columns is refused, not guessed.
    without = runner.invoke(app, ["eval", *WORLD, "--registry", str(registry), "--model-version", "1"])
    assert without.exit_code == 2
    assert "--declared-features" in " ".join(without.output.split())
