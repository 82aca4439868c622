"""Test doubles that ship with the API: a tiny real ONNX ranker, a registry writer, an in-process client.

`write_linear_model` writes a registry version whose model is a logistic
regression over the ranker columns (NaN read as 0) built directly as an ONNX
graph, so tests of loading, validation, hot reload and scoring need no trainer.
Its scores are `linear_scores(matrix, weights, bias)`, computable in numpy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper

from features.ranking import RANKER_FEATURES
from registry.layout import ModelMetadata, ModelSpec, TrainingWindow

if TYPE_CHECKING:
    import httpx  # a dev dependency: only AppClient needs it

T = TypeVar("T")
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"


def linear_model_bytes(weights: Sequence[float], bias: float) -> bytes:
    n = len(weights)
    w = helper.make_tensor("w", TensorProto.FLOAT, [n, 1], [float(v) for v in weights])
    b = helper.make_tensor("b", TensorProto.FLOAT, [1], [float(bias)])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        helper.make_node("IsNaN", [INPUT_NAME], ["missing"]),
        helper.make_node("Where", ["missing", "zero", INPUT_NAME], ["filled"]),
        helper.make_node("MatMul", ["filled", "w"], ["logit_no_bias"]),
        helper.make_node("Add", ["logit_no_bias", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], [OUTPUT_NAME], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "linear_ranker",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, 2])],
        initializer=[w, b, zero, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def linear_scores(matrix: npt.NDArray[np.float32], weights: Sequence[float], bias: float) -> npt.NDArray[np.float64]:
    filled = np.nan_to_num(matrix.astype(np.float64), nan=0.0)
    return np.asarray(1 / (1 + np.exp(-(filled @ np.asarray(weights, dtype=np.float64) + bias))))


def write_metadata(version_dir: Path, name: str, version: int, feature_names: Sequence[str] = RANKER_FEATURES) -> None:
    """metadata.json as the registry writes it (registry.layout.ModelMetadata)."""
    spec = ModelSpec(
        feature_names=tuple(feature_names),
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        output_index=1,
        objective="binary",
        training_window=TrainingWindow(0, 1),
        data_hash="test",
        metrics={},
    )
    metadata = ModelMetadata(name, version, datetime.now(UTC).isoformat(timespec="seconds"), spec)
    (version_dir / "metadata.json").write_text(json.dumps(metadata.to_json()))


def write_linear_model(
    registry: Path,
    version: int,
    weights: Sequence[float] | None = None,
    bias: float = -2.0,
    name: str = "ranker",
    feature_names: Sequence[str] = RANKER_FEATURES,
) -> Path:
    """A valid registry version `<registry>/<name>/<version>/`; default weights favour item CTR."""
    if weights is None:
        weights = default_weights()
    version_dir = registry / name / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(linear_model_bytes(weights, bias))
    write_metadata(version_dir, name, version, feature_names)
    return version_dir


def default_weights() -> list[float]:
    """Small weights so scores stay inside (0, 1) for any plausible feature values."""
    weights = np.zeros(len(RANKER_FEATURES))
    weights[RANKER_FEATURES.index("item_smoothed_ctr_24h")] = 8.0
    weights[RANKER_FEATURES.index("cross_category_affinity")] = 2.0
    weights[RANKER_FEATURES.index("item_trending_velocity")] = 0.1
    weights[RANKER_FEATURES.index("cross_seen_recently")] = -1.0
    return [float(v) for v in weights]


class AppClient:
    """A synchronous client for the ASGI app that runs its lifespan, on a private event loop.

    Background tasks (item refresh, registry watch) run whenever the loop runs: during
    requests and `wait()`. Use as a context manager.
    """

    def __init__(self, app: Any, headers: dict[str, str] | None = None, raise_app_exceptions: bool = True) -> None:
        self.app = app
        self.headers = headers or {}
        # False: an unhandled error answers what a real server would send (the 500) instead of raising.
        self.raise_app_exceptions = raise_app_exceptions
        self._loop = asyncio.new_event_loop()
        self._stack = contextlib.AsyncExitStack()
        self._client: httpx.AsyncClient | None = None

    def __enter__(self) -> AppClient:
        import httpx

        async def start() -> httpx.AsyncClient:
            await self._stack.enter_async_context(self.app.router.lifespan_context(self.app))
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=self.raise_app_exceptions)
            return await self._stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://freshrank.test", headers=self.headers)
            )

        self._client = self._loop.run_until_complete(start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.run_until_complete(self._stack.aclose())
        self._loop.close()

    @property
    def services(self) -> Any:
        return self.app.state.services

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        assert self._client is not None, "use AppClient as a context manager"
        return self._loop.run_until_complete(self._client.request(method, url, **kwargs))

    def concurrently(self, method: str, url: str, count: int, **kwargs: Any) -> list[httpx.Response]:
        """`count` identical requests in flight at the same time."""
        assert self._client is not None, "use AppClient as a context manager"
        client = self._client

        async def all_of() -> list[httpx.Response]:
            return list(await asyncio.gather(*(client.request(method, url, **kwargs) for _ in range(count))))

        return self._loop.run_until_complete(all_of())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run a coroutine on the app's loop (e.g. `client.run(services.items.refresh())`)."""
        return self._loop.run_until_complete(awaitable)

    def wait(self, seconds: float) -> None:
        """Let background tasks run for a while."""
        self._loop.run_until_complete(asyncio.sleep(seconds))

    def wait_for(self, condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
        """Let background tasks run until `condition()` holds; AssertionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"{what} did not hold within {timeout_s:.0f} s"
            self.wait(0.05)
