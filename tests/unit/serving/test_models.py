"""Model registry: validation before serving, atomic swaps, refused models never replace a good one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from features.ranking import RANKER_FEATURES
from serving.errors import ModelRejected
from serving.models import ModelRegistry, load_model, probe_batch
from serving.testing import default_weights, linear_scores, write_linear_model
from tests.factories import top_level_packages_imported_by


def test_a_valid_model_loads_and_scores_like_its_formula(tmp_path: Path) -> None:
    model = load_model(write_linear_model(tmp_path, 1))
    batch = probe_batch(len(RANKER_FEATURES))
    np.testing.assert_allclose(model.score(batch), linear_scores(batch, default_weights(), -2.0), atol=1e-6)
    assert model.version == 1 and model.session.get_session_options().intra_op_num_threads == 1


def test_a_model_with_another_feature_list_is_refused(tmp_path: Path) -> None:
    names = list(RANKER_FEATURES)
    names[0], names[1] = names[1], names[0]
    with pytest.raises(ModelRejected, match="different order"):
        load_model(write_linear_model(tmp_path, 1, feature_names=names))


def test_a_model_that_takes_declared_features_is_refused_with_what_to_do(tmp_path: Path) -> None:
    names = [*RANKER_FEATURES, "user_watch:watch_seconds_10m"]
    with pytest.raises(ModelRejected, match=r"declared stream features \['user_watch:watch_seconds_10m'\].*without"):
        load_model(write_linear_model(tmp_path, 1, feature_names=names))


def test_a_corrupt_onnx_file_is_refused(tmp_path: Path) -> None:
    version_dir = write_linear_model(tmp_path, 1)
    (version_dir / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(ModelRejected, match="not a loadable ONNX model"):
        load_model(version_dir)


def test_a_model_scoring_nan_is_refused(tmp_path: Path) -> None:
    weights = [math.nan] * len(RANKER_FEATURES)
    with pytest.raises(ModelRejected, match="non-finite"):
        load_model(write_linear_model(tmp_path, 1, weights=weights))


def test_metadata_that_does_not_match_the_graph_is_refused(tmp_path: Path) -> None:
    version_dir = write_linear_model(tmp_path, 1)
    metadata = json.loads((version_dir / "metadata.json").read_text())
    (version_dir / "metadata.json").write_text(json.dumps({**metadata, "output_name": "nope"}))
    with pytest.raises(ModelRejected, match="no output 'nope'"):
        load_model(version_dir)
    (version_dir / "metadata.json").write_text(json.dumps({k: v for k, v in metadata.items() if k != "input_name"}))
    with pytest.raises(ModelRejected, match="missing keys input_name"):
        load_model(version_dir)


def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path, "ranker")


def test_the_newest_valid_version_serves(tmp_path: Path) -> None:
    write_linear_model(tmp_path, 1)
    write_linear_model(tmp_path, 2)
    models = registry(tmp_path)
    report = models.scan()
    assert report.serving == 2 and report.loaded == [2]
    assert sorted(models.models.by_version) == [2]


def test_a_broken_new_version_is_refused_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    write_linear_model(tmp_path, 1)
    models = registry(tmp_path)
    models.scan()
    before = models.models.latest
    broken = write_linear_model(tmp_path, 2)
    (broken / "model.onnx").write_bytes(b"not onnx")
    report = models.scan()
    assert report.serving == 1 and 2 in report.refused
    assert models.models.latest is before
    # Not retried while the files stay the same; retried (and loaded) once they are fixed.
    assert models.scan().refused_now == []
    write_linear_model(tmp_path, 2)
    assert models.scan().serving == 2 and 2 not in models.refused


def test_overwriting_the_serving_version_with_garbage_keeps_the_loaded_session(tmp_path: Path) -> None:
    version_dir = write_linear_model(tmp_path, 1)
    models = registry(tmp_path)
    models.scan()
    (version_dir / "model.onnx").write_bytes(b"garbage")
    report = models.scan()
    assert report.refused_now == [1] and report.serving == 1
    assert np.all(np.isfinite(models.models.latest.score(probe_batch(len(RANKER_FEATURES)))))  # type: ignore[union-attr]


def test_first_start_with_a_broken_newest_version_serves_the_previous_one(tmp_path: Path) -> None:
    write_linear_model(tmp_path, 1)
    (write_linear_model(tmp_path, 2) / "metadata.json").write_text("{")
    assert registry(tmp_path).scan().serving == 1


def test_a_half_written_version_is_waited_for_not_refused(tmp_path: Path) -> None:
    write_linear_model(tmp_path, 1)
    models = registry(tmp_path)
    models.scan()
    (tmp_path / "ranker" / "2").mkdir()
    report = models.scan()
    assert report.serving == 1 and 2 not in report.refused
    write_linear_model(tmp_path, 2)
    assert models.scan().serving == 2


def test_pinned_versions_stay_loaded_next_to_the_newest(tmp_path: Path) -> None:
    for version in (1, 2, 3):
        write_linear_model(tmp_path, version)
    models = registry(tmp_path)
    models.pinned = frozenset({1})
    models.scan()
    assert sorted(models.models.by_version) == [1, 3]
    assert models.models.get(1) is not None and models.models.get(None) is models.models.get(3)


def test_deleting_the_newest_version_rolls_back(tmp_path: Path) -> None:
    write_linear_model(tmp_path, 1)
    models = registry(tmp_path)
    models.scan()
    newest = write_linear_model(tmp_path, 2)
    assert models.scan().serving == 2
    for child in newest.iterdir():
        child.unlink()
    newest.rmdir()
    assert models.scan().serving == 1


def test_the_feed_api_never_imports_training() -> None:
    # The API reads the registry format from registry/; training/ (LightGBM, datasets) is not its to import.
    assert "training" not in top_level_packages_imported_by("serving.app", "serving.models", "serving.testing")
