"""The model registry: versions, metadata the API relies on, and refusal of a foreign feature layout."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from features.ranking import RANKER_FEATURES
from registry.errors import FeatureMismatchError, RegistryError
from registry.layout import (
    ModelSpec,
    TrainingWindow,
    check_features,
    declared_inputs,
    latest_version,
    list_versions,
    load,
    register,
)
from tests.factories import top_level_packages_imported_by


def spec(features: tuple[str, ...] = RANKER_FEATURES) -> ModelSpec:
    return ModelSpec(
        feature_names=features,
        input_name="features",
        output_name="probabilities",
        output_index=1,
        objective="binary",
        training_window=TrainingWindow(1_000, 2_000),
        data_hash="abc",
        metrics={"auc": {"ranker_live": 0.8}},
    )


def test_versions_count_up_and_metadata_has_the_contract_keys(tmp_path: Path) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = register(tmp_path, b"onnx-1", spec(), created_at=when)
    second = register(tmp_path, b"onnx-2", spec())
    assert (first.metadata.version, second.metadata.version) == (1, 2)
    assert list_versions(tmp_path) == [1, 2] and latest_version(tmp_path) == 2
    assert (tmp_path / "ranker" / "1" / "model.onnx").read_bytes() == b"onnx-1"
    data = json.loads((tmp_path / "ranker" / "1" / "metadata.json").read_text())
    for key in ("name", "version", "created_at", "feature_names", "input_name", "output_name", "output_index",
                "objective", "training_window", "data_hash", "metrics"):  # fmt: skip
        assert key in data
    assert data["created_at"] == "2026-01-02T03:04:05+00:00"
    assert data["feature_names"] == list(RANKER_FEATURES)
    assert data["training_window"] == {"start_ms": 1_000, "end_ms": 2_000}
    newest = load(tmp_path)
    assert newest.metadata.version == 2 and newest.model_path.read_bytes() == b"onnx-2"
    assert load(tmp_path, version=1).metadata.spec == spec()
    assert not [p for p in (tmp_path / "ranker").iterdir() if p.name.startswith(".")]  # no staging left behind


def test_register_refuses_a_feature_list_that_is_not_the_contract(tmp_path: Path) -> None:
    swapped = (RANKER_FEATURES[1], RANKER_FEATURES[0], *RANKER_FEATURES[2:])
    with pytest.raises(FeatureMismatchError, match="different order"):
        register(tmp_path, b"x", spec(swapped))
    with pytest.raises(FeatureMismatchError, match="missing"):
        register(tmp_path, b"x", spec(RANKER_FEATURES[:-1]))
    with pytest.raises(FeatureMismatchError, match="unknown"):
        register(tmp_path, b"x", spec((*RANKER_FEATURES, "user_shoe_size")))
    assert list_versions(tmp_path) == []


def test_a_model_trained_on_declared_features_keeps_them_as_its_input_list(tmp_path: Path) -> None:
    declared = ("user_watch:watch_seconds_10m", "item_clickers:count_distinct_user_id_3600s")
    registered = register(tmp_path, b"x", spec((*RANKER_FEATURES, *declared)))
    assert load(tmp_path).metadata.spec.feature_names == (*RANKER_FEATURES, *declared)
    assert declared_inputs(registered.metadata.spec.feature_names) == declared
    assert declared_inputs(RANKER_FEATURES) == ()
    with pytest.raises(FeatureMismatchError, match="cannot supply"):
        check_features((*RANKER_FEATURES, *declared), allow_declared=False)
    # Only after the built-ins, only "<view>:<feature>", each once.
    for features in (
        (*declared, *RANKER_FEATURES),
        (*RANKER_FEATURES, "watch_seconds_10m"),
        (*RANKER_FEATURES, "user_watch:"),
        (*RANKER_FEATURES, declared[0], declared[0]),
    ):
        with pytest.raises(FeatureMismatchError):
            register(tmp_path, b"x", spec(features))
    assert list_versions(tmp_path) == [1]


def test_load_refuses_a_model_whose_metadata_drifted(tmp_path: Path) -> None:
    registered = register(tmp_path, b"x", spec())
    path = registered.directory / "metadata.json"
    data = json.loads(path.read_text())
    data["feature_names"] = data["feature_names"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(FeatureMismatchError):
        load(tmp_path)
    del data["metrics"]
    path.write_text(json.dumps(data))
    with pytest.raises(RegistryError, match="missing keys metrics"):
        load(tmp_path)
    with pytest.raises(RegistryError, match="no versions"):
        load(tmp_path, name="other")


def test_the_registry_does_not_import_model_libraries_or_runtimes() -> None:
    imported = top_level_packages_imported_by("registry.layout")
    assert not imported & {"lightgbm", "onnx", "onnxmltools", "onnxruntime", "sklearn", "training", "serving"}
