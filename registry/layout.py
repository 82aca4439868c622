"""The model registry on disk: `<registry>/<name>/<version>/model.onnx` + `metadata.json`.

A version is a positive integer directory name ("1", "2", ...); the newest is the highest.
A version directory is written under a temporary name and renamed into place, so a
reader never sees a half-written model, and two writers never get the same number.

The only module that reads and writes this layout: training registers models with it, the
feed API finds, reads and validates them with it. So it must only import the standard
library and numpy (via features.ranking): never lightgbm or onnx, nor training/ or serving/.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from features.ranking import RANKER_FEATURES
from registry.errors import FeatureMismatchError, RegistryError

DEFAULT_REGISTRY_DIR: Final = Path(".freshrank/models")
DEFAULT_MODEL_NAME: Final = "ranker"
MODEL_FILE: Final = "model.onnx"
METADATA_FILE: Final = "metadata.json"

_REQUIRED_KEYS: Final = (
    "name",
    "version",
    "created_at",
    "feature_names",
    "input_name",
    "output_name",
    "output_index",
    "objective",
    "training_window",
    "data_hash",
    "metrics",
)


@dataclass(frozen=True)
class TrainingWindow:
    """Event-time span of the data the model was fitted on: start_ms <= t < end_ms."""

    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a trained model except what registration assigns (version, created_at)."""

    feature_names: tuple[str, ...]
    input_name: str
    output_name: str
    output_index: int
    """Column of `output_name` holding the engagement probability ([N, 2] float tensor: column 1)."""
    objective: str
    training_window: TrainingWindow
    data_hash: str
    metrics: Mapping[str, Any]
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (hyper-parameters, parity figure, dataset sizes)."""


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: int
    created_at: str
    """ISO 8601, UTC."""
    spec: ModelSpec

    def to_json(self) -> dict[str, Any]:
        s = self.spec
        return {
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "feature_names": list(s.feature_names),
            "input_name": s.input_name,
            "output_name": s.output_name,
            "output_index": s.output_index,
            "objective": s.objective,
            "training_window": {"start_ms": s.training_window.start_ms, "end_ms": s.training_window.end_ms},
            "data_hash": s.data_hash,
            "metrics": dict(s.metrics),
            **({"extra": dict(s.extra)} if s.extra else {}),
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "metadata") -> ModelMetadata:
        if not isinstance(data, dict):
            raise RegistryError(f"{where}: expected a JSON object")
        missing = [key for key in _REQUIRED_KEYS if key not in data]
        if missing:
            raise RegistryError(f"{where}: missing keys {', '.join(missing)}")
        try:
            window = data["training_window"]
            spec = ModelSpec(
                feature_names=tuple(str(name) for name in data["feature_names"]),
                input_name=str(data["input_name"]),
                output_name=str(data["output_name"]),
                output_index=int(data["output_index"]),
                objective=str(data["objective"]),
                training_window=TrainingWindow(int(window["start_ms"]), int(window["end_ms"])),
                data_hash=str(data["data_hash"]),
                metrics=dict(data["metrics"]),
                extra=dict(data.get("extra") or {}),
            )
            return cls(str(data["name"]), int(data["version"]), str(data["created_at"]), spec)
        except (TypeError, ValueError, KeyError) as error:
            raise RegistryError(f"{where}: malformed metadata ({error!r})") from None


@dataclass(frozen=True)
class RegisteredModel:
    metadata: ModelMetadata
    directory: Path

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE


def declared_inputs(feature_names: Sequence[str], expected: Sequence[str] = RANKER_FEATURES) -> tuple[str, ...]:
    """The declared stream features a model takes after `expected` (`freshrank train --declared-features`),
    each `"<view>:<feature>"`; () when its inputs are not `expected` followed by such names only."""
    names, want = list(feature_names), list(expected)
    extra = names[len(want) :]
    if names[: len(want)] != want or len(set(extra)) != len(extra):
        return ()
    if not all(len(name.split(":")) == 2 and all(name.split(":")) for name in extra):
        return ()
    return tuple(extra)


def check_features(
    feature_names: Sequence[str], expected: Sequence[str] = RANKER_FEATURES, allow_declared: bool = True
) -> None:
    """Raise FeatureMismatchError unless the model's inputs are exactly `expected`, in order, followed (when
    `allow_declared`) by the declared stream features it was trained with: the input list is versioned with
    the model, so a registered model keeps the features it was trained on."""
    names, want = list(feature_names), list(expected)
    if names == want:
        return
    declared = declared_inputs(names, want)
    if declared and allow_declared:
        return
    if declared:
        raise FeatureMismatchError(
            f"the model also takes {len(declared)} declared stream feature(s) {list(declared[:5])} "
            "(trained with --declared-features), which this reader cannot supply"
        )
    extra = [n for n in names if n not in want]
    missing = [n for n in want if n not in names]
    detail = []
    if missing:
        detail.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        detail.append(f"unknown {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    if not detail:
        first = next(i for i, (a, b) in enumerate(zip(names, want, strict=False)) if a != b)
        detail.append(f"same names in a different order (first difference at column {first}: {names[first]!r})")
    raise FeatureMismatchError(
        f"model feature list ({len(names)} columns) does not match features.ranking.RANKER_FEATURES "
        f"({len(want)} columns): {'; '.join(detail)}. Retrain the model against the current feature layout."
    )


def _is_version(name: str) -> bool:
    return name.isdigit() and not name.startswith("0")


def list_versions(registry: Path, name: str = DEFAULT_MODEL_NAME) -> list[int]:
    """Registered versions of a model, ascending; [] if there are none."""
    directory = registry / name
    if not directory.is_dir():
        return []
    return sorted(int(entry.name) for entry in directory.iterdir() if entry.is_dir() and _is_version(entry.name))


def latest_version(registry: Path, name: str = DEFAULT_MODEL_NAME) -> int | None:
    versions = list_versions(registry, name)
    return versions[-1] if versions else None


def read_metadata(directory: Path) -> ModelMetadata:
    path = directory / METADATA_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RegistryError(f"{path} does not exist") from None
    except (OSError, ValueError) as error:
        raise RegistryError(f"{path} is not readable JSON: {error}") from None
    return ModelMetadata.from_json(data, str(path))


def load(
    registry: Path,
    name: str = DEFAULT_MODEL_NAME,
    version: int | None = None,
    expected_features: Sequence[str] = RANKER_FEATURES,
) -> RegisteredModel:
    """A registered model (the newest if version is None), validated: metadata complete, version and name
    matching the directory, feature list equal to `expected_features`, model file present."""
    chosen = latest_version(registry, name) if version is None else version
    if chosen is None:
        raise RegistryError(f"no versions of model {name!r} in {registry}; train one with `freshrank train`")
    directory = registry / name / str(chosen)
    if not directory.is_dir():
        raise RegistryError(f"model {name!r} has no version {chosen} in {registry}")
    metadata = read_metadata(directory)
    if metadata.name != name or metadata.version != chosen:
        raise RegistryError(
            f"{directory / METADATA_FILE} says {metadata.name!r} version {metadata.version}, "
            f"but lives in {name}/{chosen}"
        )
    check_features(metadata.spec.feature_names, expected_features)
    if not (directory / MODEL_FILE).is_file():
        raise RegistryError(f"{directory / MODEL_FILE} is missing")
    return RegisteredModel(metadata, directory)


def register(
    registry: Path,
    model_onnx: bytes,
    spec: ModelSpec,
    name: str = DEFAULT_MODEL_NAME,
    expected_features: Sequence[str] = RANKER_FEATURES,
    created_at: datetime | None = None,
) -> RegisteredModel:
    """Store a model as the next version of `name`; refuses one whose feature list is not `expected_features`."""
    check_features(spec.feature_names, expected_features)
    if not 0 <= spec.output_index:
        raise RegistryError(f"output_index must be a column number, got {spec.output_index}")
    if not name or "/" in name or name.startswith("."):
        raise RegistryError(f"model name {name!r} must be a plain directory name")
    when = (created_at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    model_dir = registry / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        (staging / MODEL_FILE).write_bytes(model_onnx)
        for _ in range(100):
            version = (latest_version(registry, name) or 0) + 1
            metadata = ModelMetadata(name, version, when, spec)
            (staging / METADATA_FILE).write_text(json.dumps(metadata.to_json(), indent=2, sort_keys=True) + "\n")
            try:
                # rename() of a directory onto an existing non-empty one fails: two writers never share a version.
                os.rename(staging, model_dir / str(version))
            except OSError:
                if (model_dir / str(version)).exists():
                    continue
                raise
            return RegisteredModel(metadata, model_dir / str(version))
        raise RegistryError(f"could not claim a new version of {name!r} in {registry}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
