"""A small synthetic world shared by the training tests (generated once per session, a few seconds)."""

from __future__ import annotations

import pytest

from training.sources import EventSource, synthetic_source


@pytest.fixture(scope="session")
def small_world() -> EventSource:
    # 25 minutes at 12 events/s: enough engaged impressions in each period of a 60/20/20 split.
    return synthetic_source(users=300, items=200, seconds=1500.0, rate=12.0, seed=7, new_items_per_minute=1.0)
