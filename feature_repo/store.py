"""Opening the Feast store and running `feast apply` with addresses given in code, not only the environment.

Importing this module does not import Feast: the feed API's settings read the project name here, and
importing Feast in the `freshrank serve` parent sets PROMETHEUS_MULTIPROC_DIR under prometheus_client's
feet (its workers then fail to build the app).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from feast import FeatureStore

REPO_PATH = Path(__file__).parent


def feast_env(redis_address: str, registry_path: Path | str) -> dict[str, str]:
    # Feast resolves a relative registry path against the repo dir; ours are relative to the caller.
    registry = str(registry_path) if "://" in str(registry_path) else str(Path(registry_path).resolve())
    return {"FRESHRANK_REDIS_ADDRESS": redis_address, "FRESHRANK_FEAST_REGISTRY": registry}


@functools.cache
def _repo_settings() -> dict[str, Any]:
    """feature_store.yaml as written (its ${...} variables not filled in)."""
    settings: dict[str, Any] = yaml.safe_load((REPO_PATH / "feature_store.yaml").read_text())
    return settings


def project_name() -> str:
    """The Feast project of this repo (`project:` in feature_store.yaml); part of every online-store key."""
    return str(_repo_settings()["project"])


def entity_key_serialization_version() -> int:
    """How Feast serializes entity keys in this repo (feature_store.yaml); the online-store keys depend on it."""
    return int(_repo_settings()["entity_key_serialization_version"])


def open_store(redis_address: str, registry_path: Path | str, key_ttl_s: int | None = None) -> FeatureStore:
    """A FeatureStore for `feature_store.yaml` with its two variables filled in from the arguments.

    `key_ttl_s` sets Feast's `key_ttl_seconds`: every write re-arms an EXPIRE on the entity's hash.
    """
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    text = (REPO_PATH / "feature_store.yaml").read_text()
    for name, value in feast_env(redis_address, registry_path).items():
        text = text.replace("${" + name + "}", value)
    values = yaml.safe_load(text)
    if key_ttl_s is not None:
        values["online_store"]["key_ttl_seconds"] = key_ttl_s
    config = RepoConfig(**values)
    config.repo_path = REPO_PATH
    return FeatureStore(config=config)


def apply(redis_address: str, registry_path: Path | str, timeout_s: float = 300, repo: Path = REPO_PATH) -> None:
    """Run `feast apply` on this repo, or on `repo` (a copy with more views; idempotent). Raises RuntimeError
    with Feast's output on failure."""
    if "://" not in str(registry_path):
        Path(registry_path).parent.mkdir(parents=True, exist_ok=True)
    feast = Path(sys.executable).with_name("feast")
    result = subprocess.run(
        [str(feast), "--chdir", str(repo), "apply"],
        env={**os.environ, **feast_env(redis_address, registry_path)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if result.returncode != 0:
        raise RuntimeError(f"`feast apply` failed:\n{result.stdout}\n{result.stderr}")
