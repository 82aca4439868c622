"""One error root for training/: everything a user can fix is a TrainingError with a message that says how."""

from __future__ import annotations


class TrainingError(Exception):
    """Root of every error training/ raises on purpose."""


class ParityError(TrainingError):
    """The exported ONNX model does not reproduce LightGBM's predictions closely enough."""


class DatasetError(TrainingError):
    """The event log cannot be turned into a usable dataset (empty, no labels, split impossible)."""


class SourceError(TrainingError):
    """An event log, catalog or external dataset cannot be read or fetched."""
