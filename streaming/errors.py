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


class DeclaredViewsRefused(StreamError):
    """Declared stream feature views the job cannot run: it refuses to start rather than skip them."""

    def __init__(self, refusals: list[Any]) -> None:
        lines = "\n".join(f"  {refusal}" for refusal in refusals)
        super().__init__(
            f"the stream job cannot run {len(refusals)} part(s) of the declared stream feature views "
            f"(view: field: reason):\n{lines}\nfix the Feast repo (`freshrank features check`), "
            "run `feast apply`, then start the job again"
        )
        self.refusals = refusals
