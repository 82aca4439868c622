"""What world to simulate: `WorldConfig`, checked when built so a bad setting fails before any event."""

from __future__ import annotations

import math
from dataclasses import dataclass

from features.events import MAX_POSITION, MAX_TAG_LENGTH, MIN_EVENT_TIME_MS


@dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """What world to simulate and for how long; the same config always gives the same events."""

    start_ms: int
    """Event time of the start of the span (epoch ms); required because the world never reads a clock."""
    users: int = 1000
    items: int = 500
    """Items in the catalog at start_ms; more arrive during the span."""
    categories: int = 12
    seed: int = 0
    rate: float = 1000.0
    """Events per second of event time, all event types together (met within a few percent)."""
    seconds: float = 10.0
    """Length of the span: events have start_ms <= event_time_ms < start_ms + seconds * 1000."""
    new_items_per_minute: float = 10.0
    slate_size: int = 10
    countries: tuple[str, ...] = ("US", "IN", "BR", "GB", "DE")
    """ISO 3166-1 codes; the k-th (from 0) is chosen with weight 1 / (k + 1)."""
    devices: tuple[str, ...] = ("android", "ios", "web")
    """Device tags; the k-th (from 0) is chosen with weight 1 / (k + 1)."""
    record_ground_truth: bool = True
    """Keep one ImpressionTruth per impression; turn off for long streams to save memory."""

    def __post_init__(self) -> None:
        if self.start_ms < MIN_EVENT_TIME_MS:
            raise ValueError(f"start_ms {self.start_ms} is before 2020-01-01; events would be rejected")
        for name in ("users", "items", "categories"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 1 <= self.slate_size <= MAX_POSITION + 1:
            raise ValueError(f"slate_size must be in 1..{MAX_POSITION + 1}")
        if not self.rate > 0 or not math.isfinite(self.rate):
            raise ValueError("rate must be a positive number of events per second")
        if not self.seconds > 0 or not math.isfinite(self.seconds):
            raise ValueError("seconds must be positive")
        if self.new_items_per_minute < 0:
            raise ValueError("new_items_per_minute must not be negative")
        iso_codes = all(len(c) == 2 and c.isascii() and c.isupper() for c in self.countries)
        if not self.countries or not iso_codes:
            raise ValueError("countries must be a non-empty tuple of ISO 3166-1 alpha-2 codes like 'US'")
        if not self.devices or any(not 1 <= len(d) <= MAX_TAG_LENGTH for d in self.devices):
            raise ValueError(f"devices must be a non-empty tuple of 1..{MAX_TAG_LENGTH} character tags")

    @property
    def end_ms(self) -> int:
        """First event time after the span (exclusive bound)."""
        return self.start_ms + math.ceil(self.seconds * 1000)
