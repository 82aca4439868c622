"""The training replay reads the real topic and builds the same dataset as from the in-memory log."""

from __future__ import annotations

import numpy as np
import pytest

from features.definitions import MINUTE_MS
from sdk.publisher import EventPublisher
from sdk.settings import KafkaSettings
from training.dataset import DatasetConfig, build_dataset
from training.eventlog import ReadStats, read_topic
from training.sources import synthetic_source

pytestmark = pytest.mark.integration


def test_dataset_from_the_topic_equals_dataset_from_the_log(bootstrap: str, fresh_topic: str) -> None:
    source = synthetic_source(users=100, items=80, seconds=240.0, rate=10.0, seed=5)
    with EventPublisher(KafkaSettings(bootstrap_servers=bootstrap, topic=fresh_topic)) as publisher:
        publisher.publish_many(source.events)
        publisher.flush()
    stats = ReadStats()
    from_topic = list(read_topic(bootstrap, fresh_topic, stats))
    assert stats.rejected == 0 and sorted(e.event_id for e in from_topic) == sorted(e.event_id for e in source.events)
    # Per-user order is the log order (the topic is keyed by user_id).
    for user in {e.user_id for e in source.events}:
        assert [e.event_id for e in from_topic if e.user_id == user] == [
            e.event_id for e in source.events if e.user_id == user
        ]
    config = DatasetConfig(attribution_window_ms=MINUTE_MS)
    expected = build_dataset(source.events, source.catalog, config)
    actual = build_dataset(from_topic, source.catalog, config)
    np.testing.assert_array_equal(actual.features, expected.features)
    np.testing.assert_array_equal(actual.engaged, expected.engaged)
