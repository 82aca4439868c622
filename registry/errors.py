"""One error root for registry/: an unusable registry directory or model, with a message that says how to fix it."""

from __future__ import annotations


class RegistryError(Exception):
    """The model registry directory or a model in it is unusable."""


class FeatureMismatchError(RegistryError):
    """A model's feature list is not the ranker's input layout (features.ranking.RANKER_FEATURES)."""
