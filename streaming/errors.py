"""Errors of the stream job."""

from __future__ import annotations


class StreamError(Exception):
    """Root of the stream job's errors."""


class OnlineStoreUnavailable(StreamError):
    """The online store refused a write; retry after `retry_after_s`. Nothing was dropped."""

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(f"online store unavailable ({reason}); retrying in {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s
