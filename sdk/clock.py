"""The wall clock in epoch milliseconds: the one reading of "now" that event times, row times and ages compare with.

Code that needs "now" takes a clock argument defaulting to this, so tests inject their own.
"""

from __future__ import annotations

import time


def wall_clock_ms() -> int:
    """Milliseconds since the epoch (UTC), as event times are written."""
    return time.time_ns() // 1_000_000
