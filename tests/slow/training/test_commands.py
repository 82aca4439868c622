"""`freshrank train` registers a model that `freshrank eval --model-version` then scores: the README's commands."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from features.ranking import RANKER_FEATURES
from registry.layout import load

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
