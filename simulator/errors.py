"""One error root for simulator/: a catalog or ground-truth file that cannot be used, saying which and why."""

from __future__ import annotations


class SimulatorError(Exception):
    """Root of every error simulator/ raises on purpose."""


class CatalogError(SimulatorError):
    """A catalog parquet cannot be read, or lacks the item_id column."""
