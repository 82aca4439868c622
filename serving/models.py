"""The ranker models the API serves: loaded from the registry, validated, swapped atomically.

Registry layout: `<registry>/<name>/<version>/model.onnx` + `metadata.json`, version
an integer directory name, newest = highest. A version is served only after it
passed `load_model`: its feature list equals `RANKER_FEATURES`, the ONNX graph has
the declared input and output, and a probe batch (zeros, NaNs, extremes) scores
finite probabilities. A version that fails is refused, remembered by its files'
mtimes (so it is not retried until they change) and the model that was serving
keeps serving. `ModelRegistry.models` is replaced whole, never mutated, so a
request holds one consistent set.

Never loads a model on the request path: `ModelRegistry.scan` runs in the
background watcher and from the admin endpoint, in a worker thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from features.ranking import RANKER_FEATURES
from registry.errors import RegistryError
from registry.layout import METADATA_FILE, MODEL_FILE, check_features, declared_inputs, list_versions, read_metadata
from serving.errors import ModelRejected

log = logging.getLogger("freshrank.serving.models")


@dataclass(frozen=True)
class LoadedModel:
    """One validated model version with its ONNX session (`intra_op_num_threads=1`)."""

    name: str
    version: int
    metadata: dict[str, Any]
    session: ort.InferenceSession
    input_name: str
    output_name: str
    output_index: int
    declared_inputs: tuple[str, ...] = ()
    """Declared stream features the model takes after RANKER_FEATURES (`"<view>:<feature>"`), in order."""

    def score(self, matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Engagement probability per row."""
        output = self.session.run([self.output_name], {self.input_name: matrix})[0]
        return np.asarray(output, dtype=np.float64)[:, self.output_index]


def probe_batch(n_features: int) -> npt.NDArray[np.float32]:
    """Rows a real request can produce: all missing, zeros, typical and extreme values."""
    rng = np.random.default_rng(0)
    rows = [
        np.full(n_features, np.nan),
        np.zeros(n_features),
        np.ones(n_features),
        np.full(n_features, 1e6),
        np.full(n_features, -1.0),
    ]
    typical = rng.gamma(1.0, 3.0, size=(11, n_features))
    typical[rng.random(typical.shape) < 0.2] = np.nan
    return np.vstack([np.array(rows), typical]).astype(np.float32)


def session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    # One request is one small batch: threads would fight over the same 2 cores and add jitter.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def load_model(
    version_dir: Path, expected_features: tuple[str, ...] = RANKER_FEATURES, served_declared: Collection[str] = ()
) -> LoadedModel:
    """Load and validate one version directory; ModelRejected says why it must not serve.

    `served_declared`: the declared stream features this API reads (`"<view>:<feature>"`); a model trained
    with others is refused, never fed NaN for them."""
    try:
        # The registry's own reader and feature check: one definition of a valid version.
        metadata = read_metadata(version_dir)
        check_features(metadata.spec.feature_names, expected_features)
        declared = declared_inputs(metadata.spec.feature_names, expected_features)
        unserved = [name for name in declared if name not in served_declared]
        if unserved:
            raise ModelRejected(
                f"{version_dir}: the model takes declared stream features {unserved[:5]} that this API does not "
                "read: they are not stream feature views of the Feast registry it loaded at start "
                f"({len(served_declared)} declared feature(s) served); `feast apply` the views and restart the "
                "API, or register a model trained without them"
            )
    except RegistryError as error:
        raise ModelRejected(f"{version_dir}: {error}") from None
    version, spec = metadata.version, metadata.spec
    if str(version) != version_dir.name or metadata.name != version_dir.parent.name:
        raise ModelRejected(
            f"{version_dir}: metadata says {metadata.name!r} version {version}, the directory says otherwise"
        )
    try:
        session = ort.InferenceSession(
            str(version_dir / MODEL_FILE), sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own exception types for unreadable graphs
        raise ModelRejected(f"{version_dir / MODEL_FILE}: not a loadable ONNX model ({error})") from None
    input_name, output_name = spec.input_name, spec.output_name
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if input_name not in inputs or len(inputs) != 1:
        raise ModelRejected(f"{version_dir}: the graph's inputs {sorted(inputs)} are not exactly [{input_name!r}]")
    if output_name not in outputs:
        raise ModelRejected(f"{version_dir}: the graph has no output {output_name!r} (it has {sorted(outputs)})")
    model = LoadedModel(
        name=metadata.name,
        version=version,
        metadata=metadata.to_json(),
        session=session,
        input_name=input_name,
        output_name=output_name,
        output_index=spec.output_index,
        declared_inputs=declared,
    )
    probe = probe_batch(len(expected_features) + len(declared))
    try:
        scores = model.score(probe)
    except Exception as error:
        raise ModelRejected(f"{version_dir}: scoring a probe batch failed ({error})") from None
    if scores.shape != (len(probe),) or not np.all(np.isfinite(scores)):
        raise ModelRejected(f"{version_dir}: the probe batch scored non-finite values or the wrong shape")
    if scores.min() < 0 or scores.max() > 1:
        raise ModelRejected(f"{version_dir}: output column {spec.output_index} is not a probability (outside 0..1)")
    return model


@dataclass(frozen=True)
class ModelSet:
    """What serves right now: every loaded version, and the newest of them."""

    by_version: dict[int, LoadedModel] = field(default_factory=dict)

    @property
    def latest(self) -> LoadedModel | None:
        return self.by_version[max(self.by_version)] if self.by_version else None

    def get(self, version: int | None) -> LoadedModel | None:
        return self.latest if version is None else self.by_version.get(version)


@dataclass(frozen=True)
class ScanReport:
    loaded: list[int]
    refused_now: list[int]
    refused: dict[int, str]
    serving: int | None


class ModelRegistry:
    """Watches `<root>/<name>/` and keeps the newest valid version plus the versions A/B arms pin."""

    def __init__(self, root: Path, name: str, served_declared: Collection[str] = ()) -> None:
        self.root = root
        self.name = name
        self.served_declared = frozenset(served_declared)
        self.models = ModelSet()
        self.refused: dict[int, str] = {}
        self.pinned: frozenset[int] = frozenset()
        self._attempted: dict[int, tuple[int, ...]] = {}
        self._lock = threading.Lock()  # one scan at a time (watcher vs admin reload)

    @property
    def directory(self) -> Path:
        return self.root / self.name

    def versions_on_disk(self) -> dict[int, Path]:
        try:
            versions = list_versions(self.root, self.name)
        except OSError:
            return {}
        return {version: self.directory / str(version) for version in versions}

    @staticmethod
    def _stamp(version_dir: Path) -> tuple[int, ...] | None:
        """mtimes and sizes of the two files; None while either is missing (a trainer may still write)."""
        try:
            model, metadata = (version_dir / MODEL_FILE).stat(), (version_dir / METADATA_FILE).stat()
        except OSError:
            return None
        return (model.st_mtime_ns, model.st_size, metadata.st_mtime_ns, metadata.st_size)

    def scan(self) -> ScanReport:
        """Load what is new or changed among the newest version and the pinned ones; refuse what fails."""
        with self._lock:
            on_disk = self.versions_on_disk()
            # A version whose directory was deleted (a rollback) stops serving once another one does.
            kept = {v: m for v, m in self.models.by_version.items() if v in on_disk}
            new_models = dict(kept)
            serving = max(new_models) if new_models else -1
            loaded_now: list[int] = []
            refused_now: list[int] = []
            # Newest first. A version older than what serves is only loaded if an arm pins it; a
            # version whose files have not changed since the last attempt is not tried again.
            for version in sorted(on_disk, reverse=True):
                newest_loaded = max(new_models) if new_models else -1
                if version not in self.pinned and (version < serving or version < newest_loaded):
                    continue
                stamp = self._stamp(on_disk[version])
                unchanged = self._attempted.get(version) == stamp
                # Unchanged files are not tried again if they were refused or already serve; an
                # older version unloaded when a newer one came is reloaded if that one goes away.
                if stamp is None or (unchanged and (version in self.refused or version in new_models)):
                    continue
                self._attempted[version] = stamp
                try:
                    model = load_model(on_disk[version], served_declared=self.served_declared)
                except ModelRejected as error:
                    # An in-memory session of this version (if any) keeps serving: files changed
                    # under it, but what was validated is still what answers.
                    self.refused[version] = error.message
                    refused_now.append(version)
                    log.error("model %s v%d refused: %s", self.name, version, error.message)
                    continue
                self.refused.pop(version, None)
                new_models[version] = model
                loaded_now.append(version)
                log.info("model %s v%d loaded", self.name, version)
            if not new_models:
                new_models = dict(self.models.by_version)
            # Keep the newest loaded version and the pinned ones; drop the rest (their sessions free).
            if new_models:
                newest = max(new_models)
                new_models = {v: m for v, m in new_models.items() if v == newest or v in self.pinned}
            self.models = ModelSet(new_models)
            latest = self.models.latest
            return ScanReport(sorted(loaded_now), refused_now, dict(self.refused), latest.version if latest else None)
