"""Parquet files written atomically, for the files the simulator hands to readers that poll them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq


def write_atomically(table: Any, path: Path) -> None:
    """Write parquet atomically: a temporary file in the same directory, then rename.

    The stream job and the feed API reload the catalog when it changes; they must
    never see a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        pq.write_table(table, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
