"""Errors of the stream job."""

from __future__ import annotations

from typing import Any


class StreamError(Exception):
    """Root of the stream job's errors."""


class OnlineStoreUnavailable(StreamError):
    """The online store refused a write; retry after `retry_after_s`. Nothing was dropped."""

    def __init__(self, reason: str, retry_after_s: float, cause: str = "unavailable") -> None:
        super().__init__(f"online store refused a write ({reason}); retrying in {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s
        # A bounded label for metrics: unavailable (down, timeout, frozen), oom, readonly, error.
        self.cause = cause


class DlqUnavailable(StreamError):
    """Some dead letters were not delivered to the DLQ topic; `undelivered` must be written again."""

    def __init__(self, reason: str, undelivered: list[Any], *, fatal: bool = False) -> None:
        super().__init__(f"DLQ write failed ({reason}); {len(undelivered)} records still owed")
        self.reason = reason
        self.undelivered = undelivered
        # No delivery report at all: the producer is broken; the task must fail and restore.
        self.fatal = fatal


class FlinkRestUnavailable(StreamError):
    """The Flink REST API did not answer, or holds no job of ours; the message says which and where."""
