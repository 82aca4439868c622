"""Errors raised by the client event SDK. One root, `SDKError`, so apps can catch everything we raise."""

from __future__ import annotations


class SDKError(Exception):
    """Root of every error the SDK raises."""


class InvalidEventError(SDKError, ValueError):
    """The event breaks the contract; nothing was sent. `field` names the culprit."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid event: {field} {reason}")
        self.field = field
        self.reason = reason


class PublisherBackpressure(SDKError):
    """The local send queue stayed full for longer than allowed; retry after `retry_after_s`."""

    def __init__(self, retry_after_s: float, queued: int) -> None:
        super().__init__(
            f"local send queue is full ({queued} events waiting for the broker); retry in {retry_after_s:.2f} s"
        )
        self.retry_after_s = retry_after_s
        self.queued = queued


class UndeliveredEventsError(SDKError):
    """flush()/close() ran out of time with events still not acknowledged by the broker."""

    def __init__(self, pending: int, failed: int) -> None:
        super().__init__(
            f"{pending} events were not acknowledged before the timeout and {failed} failed delivery; "
            "check that the broker is reachable (bootstrap servers, security settings)"
        )
        self.pending = pending
        self.failed = failed


class PublisherClosedError(SDKError):
    """publish() was called after close()."""
