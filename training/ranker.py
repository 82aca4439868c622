"""The ranker: a LightGBM binary classifier of engagement, exported to ONNX and checked against itself.

Why binary and not lambdarank: the feed API needs a calibrated P(engaged) per item (to
mix in exploration slots and blend policies, and to report per-item scores), most
slates hold no engaged item at all (lambdarank learns nothing from them, binary does),
and log loss and AUC stay meaningful. NDCG@10 is still how the ranker is judged.

The ONNX graph is exported without ZipMap, so its `probabilities` output is a float
tensor [N, 2] whose column 1 is P(engaged). `export_onnx` refuses a graph whose
predictions differ from LightGBM's by PARITY_TOLERANCE or more on the given rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from features.ranking import RANKER_FEATURES
from training.errors import ParityError, TrainingError

INPUT_NAME: Final = "features"
OUTPUT_NAME: Final = "probabilities"
OUTPUT_INDEX: Final = 1
OBJECTIVE: Final = "binary"
PARITY_TOLERANCE: Final = 1e-5
ONNX_OPSET: Final = 15

Float32Array = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_rounds: int = 1000
    early_stopping_rounds: int = 50
    threads: int = 1
    """One thread: on a small shared machine LightGBM's OpenMP threads spin against other work and
    run several times slower than one thread."""
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    serving_trees: int | None = None
    """Serve only the first N trees (None: every tree early stopping kept). Scoring cost is linear in
    trees (82 trees: ~1.7 ms for 500 candidates, half of a feed request's CPU); the evaluation then
    reports the full model's AUC and NDCG@10 next to the served one's (`full_model`)."""

    def params(self) -> dict[str, Any]:
        return {
            "objective": OBJECTIVE,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": self.lambda_l2,
            "num_threads": self.threads,
            "seed": self.seed,
            "deterministic": True,
            "verbose": -1,
            **self.extra,
        }


@dataclass(frozen=True)
class TrainedRanker:
    booster: Any
    """lightgbm.Booster, trimmed to its best iteration."""
    best_iteration: int
    params: dict[str, Any]

    def predict(self, x: Float32Array) -> FloatArray:
        out: FloatArray = np.asarray(self.booster.predict(x), dtype=np.float64)
        return out


def train_ranker(
    x_train: Float32Array,
    y_train: npt.NDArray[np.bool_],
    x_valid: Float32Array,
    y_valid: npt.NDArray[np.bool_],
    config: TrainConfig = TrainConfig(),
    progress: Callable[[int, int], None] | None = None,
    feature_names: Sequence[str] = RANKER_FEATURES,
) -> TrainedRanker:
    """Fit with early stopping on the validation period's log loss; `feature_names` names the matrix's columns."""
    import lightgbm as lgb

    if x_train.shape[1] != len(feature_names):
        raise TrainingError(f"training matrix has {x_train.shape[1]} columns, its feature list {len(feature_names)}")
    if not y_train.any() or y_train.all():
        raise TrainingError("the training period needs both engaged and not engaged impressions")
    params = config.params()
    names = [_lightgbm_name(name) for name in feature_names]
    train_set = lgb.Dataset(x_train, y_train.astype(np.float64), feature_name=names, free_raw_data=False)
    valid_set = lgb.Dataset(x_valid, y_valid.astype(np.float64), reference=train_set)
    callbacks: list[Any] = [lgb.early_stopping(config.early_stopping_rounds, verbose=False)]
    if progress is not None:

        def report(env: Any) -> None:
            progress(env.iteration + 1, env.end_iteration)

        callbacks.append(report)
    booster = lgb.train(
        params, train_set, num_boost_round=config.max_rounds, valid_sets=[valid_set], callbacks=callbacks
    )
    best = int(booster.best_iteration or booster.current_iteration())
    # Keep only the trees early stopping chose, so LightGBM and the ONNX export are the same model.
    text = float32_thresholds(booster.model_to_string(num_iteration=best))
    return TrainedRanker(lgb.Booster(model_str=text), best, params)


def _lightgbm_name(name: str) -> str:
    """LightGBM refuses some characters in feature names (JSON ones); a declared "view:feature" keeps its meaning."""
    return name.replace(":", "__")


def first_trees(ranker: TrainedRanker, trees: int) -> TrainedRanker:
    """The ranker cut to its first `trees` trees (boosting is additive: a prefix is a complete model)."""
    import lightgbm as lgb

    if trees >= ranker.best_iteration:
        return ranker
    text = ranker.booster.model_to_string(num_iteration=trees)
    return TrainedRanker(lgb.Booster(model_str=text), trees, {**ranker.params, "serving_trees": trees})


def _round_down_to_float32(value: float) -> float:
    f = np.float32(value)
    if float(f) > value:
        f = np.nextafter(f, np.float32(-np.inf), dtype=np.float32)
    return float(f)


def float32_thresholds(model_text: str) -> str:
    """The same LightGBM model with every split threshold t replaced by the largest float32 <= t.

    ONNX tree ensembles compare float32 inputs with float32 thresholds, and the converter
    rounds a double threshold to the *nearest* float32; a value lying between t and that
    rounding then goes the other way (seen: a 1e-3 difference in one prediction). For a
    float32 x, `x <= t` holds exactly when `x <= round_down(t)`, so this changes no
    prediction on float32 input, and both runtimes then compare against the same number.
    """
    out = []
    for line in model_text.splitlines():
        if line.startswith("tree_sizes="):
            continue  # byte sizes of the tree blocks, which change here; LightGBM parses without them
        if line.startswith("threshold="):
            values = line[len("threshold=") :].split()
            line = "threshold=" + " ".join(repr(_round_down_to_float32(float(v))) for v in values)
        out.append(line)
    return "\n".join(out) + "\n"


def export_onnx(ranker: TrainedRanker) -> bytes:
    """The ranker as an ONNX graph: input `features` float [N, F], output `probabilities` float [N, 2]."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = onnxmltools.convert_lightgbm(
        ranker.booster,
        name="freshrank-ranker",
        initial_types=[(INPUT_NAME, FloatTensorType([None, ranker.booster.num_feature()]))],
        zipmap=False,
        target_opset=ONNX_OPSET,
    )
    outputs = [output.name for output in model.graph.output]
    if OUTPUT_NAME not in outputs:
        raise TrainingError(f"ONNX export has outputs {outputs}, expected {OUTPUT_NAME!r}")
    data: bytes = model.SerializeToString()
    return data


class OnnxRanker:
    """Scores feature matrices with an ONNX ranker the way the feed API does (one intra-op thread)."""

    def __init__(self, model: bytes, input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME, index: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the converter declares label's shape as [1]; ORT warns on every run
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._input, self._output, self._index = input_name, output_name, index

    def predict(self, x: Float32Array, batch: int = 65_536) -> FloatArray:
        parts = [
            self._session.run([self._output], {self._input: np.ascontiguousarray(x[i : i + batch], dtype=np.float32)})[
                0
            ]
            for i in range(0, max(len(x), 1), batch)
        ]
        out = np.concatenate(parts)[:, self._index] if len(x) else np.empty(0)
        return np.asarray(out, dtype=np.float64)


def check_parity(ranker: TrainedRanker, model: bytes, x: Float32Array) -> float:
    """Max |LightGBM - ONNX| over the rows of x; raises ParityError at PARITY_TOLERANCE or more."""
    if len(x) == 0:
        raise ParityError("no rows to check ONNX parity on")
    diff = float(np.max(np.abs(ranker.predict(x) - OnnxRanker(model).predict(x))))
    if not diff < PARITY_TOLERANCE:
        raise ParityError(
            f"ONNX predictions differ from LightGBM's by up to {diff:.3g} (tolerance {PARITY_TOLERANCE:g}); "
            "the export is not the trained model, refusing to register it"
        )
    return diff
