"""The stream reader fetches once per tick, not once per batch a producer sends (real broker).

The embedded broker lists every batch a partition holds on each fetch, so a
consumer that fetches each new batch as it lands (librdkafka's default) cost it
most of a core at 5,000 events/s. Counted from librdkafka's own statistics.
"""

from __future__ import annotations

import json
import time
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from streaming.operators import partition_consumer_config
from streaming.settings import StreamSettings

TICK_S = 0.05
SECONDS = 2.0


def fetch_requests(config: dict[str, Any], bootstrap: str, topic: str) -> tuple[int, int]:
    """(Fetch requests sent, records sent, each its own batch) while a producer sends one batch each 5 ms and a loop
    drains the consumer once per tick, as the job's ticks do."""
    stats: list[dict[str, Any]] = []
    consumer = Consumer(
        {**config, "statistics.interval.ms": 200, "stats_cb": lambda text: stats.append(json.loads(text))}
    )
    consumer.assign([TopicPartition(topic, 0, 0)])

    def drain() -> int:
        return sum(1 for message in consumer.consume(2000, 0) if message.error() is None)

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    read = sent = 0
    started = next_tick = time.monotonic()
    while time.monotonic() - started < SECONDS:
        producer.produce(topic, value=b"x" * 100, partition=0)
        producer.poll(0)
        sent += 1
        if time.monotonic() >= next_tick:
            next_tick += TICK_S
            read += drain()
        time.sleep(0.005)
    producer.flush(10)
    deadline = time.monotonic() + 10
    while read < sent and time.monotonic() < deadline:
        read += drain()
        time.sleep(TICK_S)
    stats.clear()
    while not stats and time.monotonic() < deadline + 5:
        consumer.poll(0.1)  # serves stats_cb
    consumer.close()
    assert read == sent, f"read {read} of {sent} records"
    fetches = sum(broker["req"].get("Fetch", 0) for broker in stats[-1]["brokers"].values())
    return fetches, sent


def test_the_reader_fetches_about_once_per_tick_not_once_per_batch(bootstrap: str, fresh_topic: str) -> None:
    settings = StreamSettings(bootstrap_servers=bootstrap, topic=fresh_topic)
    fetches, batches = fetch_requests(partition_consumer_config(settings), bootstrap, fresh_topic)
    ticks = SECONDS / TICK_S
    # Measured here: ~45 fetches for ~385 batches and 40 ticks; without the gate, ~210 (librdkafka
    # fetches again as soon as a fetch returns data).
    assert fetches < 2.5 * ticks, f"{fetches} fetches for {batches} batches and {ticks:.0f} ticks"
