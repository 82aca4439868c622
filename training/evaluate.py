"""Offline evaluation on the test period, and the train-export-check pipeline `freshrank train` and `eval` share.

Scorers compared on the same test impressions (the last period of the time split):

* `popularity`: the item's clicks in the 24 h before the request (point-in-time);
* `ranker_live`: the ONNX ranker on the features the API would have had;
* `ranker_stale`: the same with the user's features frozen `stale_offset_ms` earlier;
* `ranker_no_user`: the same with no user row (user and cross columns NaN);
* `oracle`: synthetic worlds only. NDCG uses the generator's position-free
  P(engaged | examined), the ranking an ideal ranker would serve; AUC and log loss use
  P(engaged) at the logged position, the best possible prediction of the label.

NDCG@10 is per slate (one ranked response) over slates with an engaged impression,
i.e. how well each scorer re-orders what was shown. Slices: `new_users` had no event
before the request (no online feature row), `returning_users` had one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from features.declared import DeclaredView
from registry.layout import ModelSpec, TrainingWindow
from training.dataset import DatasetConfig, ImpressionDataset, TimeSplit, build_dataset, time_split
from training.metrics import auc, log_loss, ndcg_at_k, rounded
from training.ranker import (
    INPUT_NAME,
    OBJECTIVE,
    OUTPUT_INDEX,
    OUTPUT_NAME,
    OnnxRanker,
    TrainConfig,
    TrainedRanker,
    check_parity,
    export_onnx,
    first_trees,
    train_ranker,
)
from training.sources import EventSource, GroundTruth

SCORERS = ("popularity", "ranker_live", "ranker_stale", "ranker_no_user", "oracle")
TARGET_AUC = 0.75
TARGET_NDCG_LIFT = 1.10
StepProgress = Callable[[str, int, int], None]
FloatArray = npt.NDArray[np.float64]


class Scorer(Protocol):
    def predict(self, x: npt.NDArray[np.float32]) -> FloatArray: ...


def _metrics(
    scores: dict[str, tuple[FloatArray, FloatArray] | None], labels: npt.NDArray[np.bool_], slates: npt.NDArray[Any]
) -> dict[str, dict[str, float | None]]:
    """scores[name] = (ranking score, probability for AUC/log loss) or None."""
    out: dict[str, dict[str, float | None]] = {"ndcg@10": {}, "auc": {}, "log_loss": {}}
    for name, pair in scores.items():
        if pair is None:
            for metric in out.values():
                metric[name] = None
            continue
        rank_score, probability = pair
        out["ndcg@10"][name] = rounded(ndcg_at_k(rank_score, labels, slates, k=10))
        out["auc"][name] = rounded(auc(probability, labels))
        is_probability = name != "popularity"
        out["log_loss"][name] = rounded(log_loss(probability, labels)) if is_probability else None
    return out


def evaluate(
    model: Scorer, test: ImpressionDataset, truth: GroundTruth | None, label: str = "engaged"
) -> dict[str, Any]:
    """Metrics of every scorer on the test rows, overall and per user slice (see the module docstring)."""
    labels = test.label(label)
    live = model.predict(test.features)
    scores: dict[str, tuple[FloatArray, FloatArray] | None] = {
        "popularity": (test.popularity, test.popularity),
        "ranker_live": (live, live),
        "ranker_stale": None,
        "ranker_no_user": None,
        "oracle": None,
    }
    if test.stale_features is not None:
        stale = model.predict(test.stale_features)
        scores["ranker_stale"] = (stale, stale)
    no_user = model.predict(test.no_user_features())
    scores["ranker_no_user"] = (no_user, no_user)
    if truth is not None:
        relevance, p_engaged = truth.lookup(test.event_id)
        if not np.isnan(relevance).any():
            scores["oracle"] = (relevance, p_engaged)
    report: dict[str, Any] = _metrics(scores, labels, test.slate)
    slices: dict[str, Any] = {}
    for name, mask in (("new_users", test.new_user), ("returning_users", ~test.new_user)):
        sliced = {k: None if v is None else (v[0][mask], v[1][mask]) for k, v in scores.items()}
        slices[name] = {
            "impressions": int(mask.sum()),
            "slates": int(len(np.unique(test.slate[mask]))),
            "engaged": int(labels[mask].sum()),
            **_metrics(sliced, labels[mask], test.slate[mask]),
        }
    report["slices"] = slices
    report["test"] = {
        "impressions": len(test),
        "slates": int(len(np.unique(test.slate))),
        "engaged": int(labels.sum()),
        "label": label,
    }
    return report


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """Whether the ranker meets the issue's bar: AUC >= 0.75 and NDCG@10 >= 1.10 x popularity."""
    ndcg, roc = report["ndcg@10"], report["auc"]
    live, popular = ndcg.get("ranker_live"), ndcg.get("popularity")
    lift = None if not live or not popular else round(live / popular, 4)
    return {
        "auc_ranker_live": roc.get("ranker_live"),
        "auc_target": TARGET_AUC,
        "ndcg_lift_over_popularity": lift,
        "ndcg_lift_target": TARGET_NDCG_LIFT,
        "met": bool(
            roc.get("ranker_live") is not None
            and roc["ranker_live"] >= TARGET_AUC
            and lift is not None
            and lift >= TARGET_NDCG_LIFT
        ),
    }


@dataclass(frozen=True)
class Experiment:
    dataset: ImpressionDataset
    split: TimeSplit
    train: ImpressionDataset
    valid: ImpressionDataset
    test: ImpressionDataset
    ranker: TrainedRanker
    onnx: bytes
    parity_max_abs_diff: float
    report: dict[str, Any]

    def training_data_hash(self) -> str:
        return f"{self.train.content_hash()}:{self.valid.content_hash()}"

    def model_spec(self, source_name: str) -> ModelSpec:
        """What the registry records with this experiment's ONNX model (`freshrank train`, benchmarks)."""
        report = self.report
        return ModelSpec(
            feature_names=self.dataset.feature_names,
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            output_index=OUTPUT_INDEX,
            objective=OBJECTIVE,
            training_window=TrainingWindow(
                int(self.train.request_time_ms.min()), self.split.valid_end_ms - self.split.gap_ms
            ),
            data_hash=self.training_data_hash(),
            metrics={key: report[key] for key in ("ndcg@10", "auc", "log_loss", "test", "targets")},
            extra={
                "source": source_name,
                "label": "engaged",
                "best_iteration": self.ranker.best_iteration,
                "full_model": report.get("full_model"),
                "params": self.ranker.params,
                "parity_max_abs_diff": self.parity_max_abs_diff,
                "split": report["split"],
            },
        )


def split_dataset(
    dataset: ImpressionDataset, valid_fraction: float, test_fraction: float, gap_ms: int
) -> tuple[TimeSplit, ImpressionDataset, ImpressionDataset, ImpressionDataset]:
    split = time_split(dataset, valid_fraction, test_fraction, gap_ms)
    train, valid, test = (dataset.take(mask) for mask in split.masks(dataset.request_time_ms))
    return split, train, valid, test


def run_experiment(
    source: EventSource,
    dataset_config: DatasetConfig | None = None,
    train_config: TrainConfig | None = None,
    valid_fraction: float = 0.2,
    test_fraction: float = 0.2,
    progress: StepProgress | None = None,
    declared: Sequence[DeclaredView] = (),
) -> Experiment:
    """Replay -> time split -> train (early stopping on valid) -> ONNX export -> parity check -> test metrics.

    `declared`: stream feature views declared in Feast, replayed point-in-time and appended to the ranker's
    inputs (after RANKER_FEATURES); the registered model's feature list names them."""

    dataset_config = dataset_config or DatasetConfig()
    train_config = train_config or TrainConfig()

    def step(name: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(name, done, total)

    dataset = build_dataset(source.events, source.catalog, dataset_config, step("replaying events"), declared)
    if declared:
        dataset = dataset.with_declared_inputs()
    split, train, valid, test = split_dataset(
        dataset, valid_fraction, test_fraction, dataset_config.attribution_window_ms
    )
    trained = train_ranker(
        train.features,
        train.engaged,
        valid.features,
        valid.engaged,
        train_config,
        step("training LightGBM"),
        dataset.feature_names,
    )
    ranker = trained if train_config.serving_trees is None else first_trees(trained, train_config.serving_trees)
    onnx = export_onnx(ranker)
    parity = check_parity(ranker, onnx, test.features)
    report = evaluate(OnnxRanker(onnx), test, source.truth)
    if ranker is not trained:
        # What serving fewer trees trades: the full model's test metrics beside the served one's.
        full = evaluate(OnnxRanker(export_onnx(trained)), test, source.truth)
        report["full_model"] = {
            "trees": trained.best_iteration,
            "auc": full["auc"]["ranker_live"],
            "ndcg@10": full["ndcg@10"]["ranker_live"],
            "log_loss": full["log_loss"]["ranker_live"],
        }
    report["targets"] = targets(report)
    report["parity_max_abs_diff"] = parity
    report["split"] = {
        "train_end_ms": split.train_end_ms,
        "valid_end_ms": split.valid_end_ms,
        "gap_ms": split.gap_ms,
        "train_impressions": len(train),
        "valid_impressions": len(valid),
        "test_impressions": len(test),
    }
    report["model"] = {
        "best_iteration": trained.best_iteration,
        "serving_trees": ranker.best_iteration,
        "objective": "binary",
    }
    return Experiment(dataset, split, train, valid, test, ranker, onnx, parity, report)
