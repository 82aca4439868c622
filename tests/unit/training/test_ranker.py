"""Train -> ONNX -> parity on a small generated world, and the refusal of an export that disagrees."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from features.definitions import MINUTE_MS
from features.ranking import RANKER_FEATURES
from training.dataset import DatasetConfig
from training.errors import ParityError
from training.evaluate import SCORERS, Experiment, run_experiment
from training.ranker import (
    INPUT_NAME,
    OUTPUT_NAME,
    PARITY_TOLERANCE,
    OnnxRanker,
    TrainConfig,
    TrainedRanker,
    check_parity,
    export_onnx,
    float32_thresholds,
)
from training.sources import EventSource


@pytest.fixture(scope="module")
def experiment(small_world: EventSource) -> Experiment:
    return run_experiment(
        small_world,
        DatasetConfig(attribution_window_ms=MINUTE_MS),
        TrainConfig(max_rounds=60, early_stopping_rounds=20, min_data_in_leaf=40),
    )


def test_onnx_reproduces_lightgbm_on_the_test_period(experiment: Experiment) -> None:
    x = experiment.test.features
    assert np.isnan(x).any()  # missing users/items are part of what parity covers
    onnx_scores = OnnxRanker(experiment.onnx).predict(x)
    assert np.max(np.abs(onnx_scores - experiment.ranker.predict(x))) < PARITY_TOLERANCE
    assert experiment.parity_max_abs_diff < PARITY_TOLERANCE
    assert np.all((onnx_scores > 0) & (onnx_scores < 1))


def test_onnx_graph_has_the_contracted_input_and_a_float_probability_tensor(experiment: Experiment) -> None:
    graph = onnx.load_from_string(experiment.onnx).graph
    assert [i.name for i in graph.input] == [INPUT_NAME]
    assert graph.input[0].type.tensor_type.shape.dim[1].dim_value == len(RANKER_FEATURES)
    output = next(o for o in graph.output if o.name == OUTPUT_NAME)
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # zipmap disabled: [N, 2] floats


def test_a_different_model_fails_the_parity_check(experiment: Experiment, small_world: EventSource) -> None:
    other = run_experiment(
        small_world,
        DatasetConfig(attribution_window_ms=MINUTE_MS, stale_offset_ms=None),
        TrainConfig(max_rounds=5, early_stopping_rounds=5, learning_rate=0.3, seed=1),
    )
    with pytest.raises(ParityError, match="refusing to register"):
        check_parity(experiment.ranker, other.onnx, experiment.test.features)


def test_report_has_every_scorer_and_slice(experiment: Experiment) -> None:
    report = experiment.report
    for metric in ("ndcg@10", "auc", "log_loss"):
        assert set(report[metric]) == set(SCORERS)
    assert report["ndcg@10"]["oracle"] is not None and report["log_loss"]["popularity"] is None
    assert set(report["slices"]) == {"new_users", "returning_users"}
    assert report["slices"]["returning_users"]["impressions"] + report["slices"]["new_users"]["impressions"] == len(
        experiment.test
    )


def test_thresholds_between_adjacent_float32_values_keep_parity() -> None:
    """A split between two adjacent float32 values: the converter's nearest rounding sends one of them the
    wrong way; rounding thresholds down to float32 keeps LightGBM's predictions and ONNX's identical."""
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    low = np.float32(0.1)
    high = np.nextafter(low, np.float32(1))
    x = rng.random((2000, len(RANKER_FEATURES))).astype(np.float32)
    x[:, 0] = np.where(rng.random(2000) < 0.5, low, high)
    y = x[:, 0] > low
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5}
    booster = lgb.train(params, lgb.Dataset(x, y.astype(float)), num_boost_round=5)
    fixed = lgb.Booster(model_str=float32_thresholds(booster.model_to_string()))
    np.testing.assert_array_equal(fixed.predict(x), booster.predict(x))
    ranker = TrainedRanker(fixed, 5, params)
    assert check_parity(ranker, export_onnx(ranker), x) < PARITY_TOLERANCE


def test_a_serving_model_of_fewer_trees_reports_the_full_model_beside_it(
    small_world: EventSource, experiment: Experiment
) -> None:
    full_trees = experiment.ranker.best_iteration
    assert full_trees > 3
    cut = run_experiment(
        small_world,
        DatasetConfig(attribution_window_ms=MINUTE_MS),
        TrainConfig(max_rounds=60, early_stopping_rounds=20, min_data_in_leaf=40, serving_trees=3),
    )
    assert cut.ranker.best_iteration == 3 and cut.report["model"]["serving_trees"] == 3
    assert cut.report["model"]["best_iteration"] == full_trees
    graph = onnx.load_from_string(cut.onnx).graph
    tree_ids = next(a for a in graph.node[0].attribute if a.name == "nodes_treeids").ints
    assert len(set(tree_ids)) == 3
    full = cut.report["full_model"]
    assert full["trees"] == full_trees
    assert full["auc"] == experiment.report["auc"]["ranker_live"]
    assert cut.parity_max_abs_diff < PARITY_TOLERANCE
