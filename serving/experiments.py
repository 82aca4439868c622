"""A/B arms: which model version a user's request is ranked with.

Config file (YAML or JSON), e.g.::

    name: ranker-v3-vs-v2
    salt: 2026-11-ranker      # change it to reshuffle users between arms
    arms:
      - {name: control, weight: 50, model_version: 2}
      - {name: treatment, weight: 50, model_version: latest}

A user's arm is a stable hash of (salt, user_id) mapped onto the arms' weights,
so the same user gets the same arm on every replica and after restarts, and
assignment is independent across experiments with different salts. Without a
file there is one arm, `default`, serving the newest model. A file that stops
parsing during a reload is reported and the previous config stays.
"""

from __future__ import annotations

import hashlib
import json
import logging
from bisect import bisect_right
from itertools import accumulate
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serving.errors import ConfigError

log = logging.getLogger("freshrank.serving.experiments")


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    """Reported in responses (`arm`) and in events' `variant`."""
    weight: float = Field(gt=0)
    """Relative share of users."""
    model_version: int | Literal["latest"] = "latest"
    """Registry version this arm ranks with; `latest` follows the newest valid version."""

    @property
    def pinned_version(self) -> int | None:
        return None if self.model_version == "latest" else self.model_version


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "default"
    """Name of the experiment, for logs and the admin endpoint."""
    salt: str = Field("freshrank", min_length=1)
    """Mixed into the hash: a new salt reshuffles users."""
    arms: tuple[Arm, ...] = Field(default=(Arm(name="default", weight=1.0),), min_length=1)
    """The arms; names must be unique."""

    @field_validator("arms")
    @classmethod
    def _unique_names(cls, arms: tuple[Arm, ...]) -> tuple[Arm, ...]:
        names = [arm.name for arm in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        return arms

    def pinned_versions(self) -> frozenset[int]:
        return frozenset(v for arm in self.arms if (v := arm.pinned_version) is not None)


class Assigner:
    """Maps a user id to an arm of one config; pure and cheap (one blake2b per request)."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        total = sum(arm.weight for arm in config.arms)
        self._bounds = [w / total for w in accumulate(arm.weight for arm in config.arms)]
        self._salt = config.salt.encode() + b"\x00"

    def assign(self, user_id: str) -> Arm:
        digest = hashlib.blake2b(self._salt + user_id.encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big") / 2**64
        index = min(bisect_right(self._bounds, point), len(self.config.arms) - 1)
        return self.config.arms[index]


def parse_config(path: Path) -> ExperimentConfig:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return ExperimentConfig.model_validate(data)
    except (OSError, ValueError, yaml.YAMLError) as error:
        detail = error.errors(include_url=False) if isinstance(error, ValidationError) else str(error)
        raise ConfigError(f"experiments config {path} is not valid: {detail}") from None


class Experiments:
    """The current experiment config (from a file, reloaded when it changes) and its assigner."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.error: str | None = None
        self.assigner = Assigner(parse_config(path) if path is not None else ExperimentConfig())
        if path is not None:
            self._stamp = self._stat()

    @property
    def config(self) -> ExperimentConfig:
        return self.assigner.config

    def _stat(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def reload_if_changed(self) -> bool:
        stamp = self._stat()
        if self.path is None or stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            config = parse_config(self.path)
        except ConfigError as error:
            self.error = error.message
            log.error("%s; keeping the previous config", error.message)
            return False
        self.error = None
        self.assigner = Assigner(config)
        log.info("experiments reloaded: %s with arms %s", config.name, [a.name for a in config.arms])
        return True
