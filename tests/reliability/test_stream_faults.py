"""The stream job under faults, on a real broker, Redis and PyFlink mini-cluster.

Each test names the fault, injects it for real (a hostile record on the topic, a
DLQ the producer cannot write, a recreated topic, a changed layout, Redis at
maxmemory or frozen with SIGSTOP, a half-written catalog) and asserts that
nothing is lost or double counted: what Feast serves equals the pure replay of
the admitted events, and the refused records are on the DLQ with their reason.
Waits are on conditions (a metric, a row), never fixed sleeps.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import redis
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from feature_repo.layout import redis_host_port
from features.codec import HEADER, EventCodec
from features.events import EventType, InteractionEvent
from features.partitioning import partition_for
from sdk.clock import wall_clock_ms
from simulator.catalog import write_catalog
from stack.processes import Component
from streaming.partition import MAX_REASON_BYTES
from tests.factories import avro_string_length
from tests.integration.streamjob import (
    StreamJob,
    encoded,
    expected_features,
    logged_events,
    mismatches,
    produce_raw,
    read_topic,
    wait_exact,
    wait_until,
    with_resends_and_disorder,
    world_events,
)
from tests.reliability.conftest import LATENESS_MS, create_topic, delete_topic

StartJob = Callable[..., StreamJob]
CODEC = EventCodec()
PARTITIONS = 4


def exact(
    bootstrap: str, topic: str, partitions: int, redis_server: Component, registry: Path, categories: dict[str, str]
) -> list[str]:
    """Wait until Feast serves the replay of everything admissible on `topic`; return what still differs."""
    events, times = logged_events(bootstrap, topic, partitions)
    by_user, by_item = expected_features(events, categories, LATENESS_MS, times)
    return wait_exact(lambda: mismatches(redis_server.address, registry, by_user, by_item, categories), 240)


def headers(message: object) -> dict[str, str]:
    return {k: v.decode() for k, v in (message.headers() or [])}  # type: ignore[attr-defined]


def test_poison_records_go_to_the_dlq_and_everyone_elses_features_keep_flowing(
    start_job: StartJob, bootstrap: str, redis_server: Component, feast_registry: Path, dlq_topic: str, tmp_path: Path
) -> None:
    """Fault: hostile records (invalid UTF-8, ~1 MB of random bytes, bad framing, key/partition lies, clock skew)."""
    topic = create_topic(bootstrap, PARTITIONS)
    events, categories, world = world_events(800, seed=11)
    write_catalog(world.catalog(), tmp_path / "catalog.parquet")
    liar = next(f"liar-{n}" for n in range(100) if partition_for(f"liar-{n}".encode(), PARTITIONS) != 0)
    poison = [
        (b"p1", HEADER.pack(0, 1) + avro_string_length(250_000) + b"\xff" * 250_000),  # invalid UTF-8 in event_id
        (b"p2", HEADER.pack(0, 1) + os.urandom(900_000)),  # framed random bytes
        (b"p3", HEADER.pack(0, 1) + os.urandom(1_000_000)),  # about 1 MB
        (b"p4", b"\x07garbage framing"),
        (b"someone-else", CODEC.encode(InteractionEvent("k1", "u-key", "i-1", EventType.CLICK, wall_clock_ms()))),
    ]
    produce_raw(bootstrap, topic, poison)
    # A record of `liar` written to a partition murmur2 does not give its key (a CRC32 producer, say).
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    liar_event = InteractionEvent("k2", liar, "i-1", EventType.CLICK, wall_clock_ms())
    producer.produce(topic, key=liar.encode(), value=CODEC.encode(liar_event), partition=0)
    assert producer.flush(30) == 0
    # One event from a client whose clock runs 59 minutes fast, then ten present-time events of the same user.
    now = wall_clock_ms()
    skewed = [InteractionEvent("s0", "u-skew", "i-1", EventType.VIEW, now + 59 * 60_000, watch_ms=1_000)]
    skewed += [
        InteractionEvent(f"s{n}", "u-skew", "i-2", EventType.VIEW, now + n, watch_ms=1_000) for n in range(1, 11)
    ]
    produce_raw(bootstrap, topic, list(encoded(skewed)))
    produce_raw(bootstrap, topic, list(encoded(with_resends_and_disorder(events, seed=11))))

    job = start_job(topic)
    problems = exact(bootstrap, topic, PARTITIONS, redis_server, feast_registry, categories)
    assert problems == [], problems[:20]
    wait_until(lambda: job.metric("freshrank_stream_dlq_records_total") >= 6, 60, "six dead letters")
    assert job.metric("freshrank_stream_task_restarts_total") == 0
    assert job.metric("freshrank_stream_clock_skew_clamped_total") == 1
    assert job.metric('freshrank_stream_events_total{outcome="late"}') == 0  # the skewed user's events all count

    letters = read_topic(bootstrap, dlq_topic)
    assert len(letters) == 6
    by_key = {m.key(): m for m in letters}
    for message in letters:
        reason = headers(message)["reason"]
        assert len(reason.encode()) <= MAX_REASON_BYTES and "\\xff" not in reason
    assert "UTF-8" in headers(by_key[b"p1"])["reason"]
    big = headers(by_key[b"p3"])
    assert big["truncated"] == "true" and int(big["original.size"]) == 1_000_005 + 2
    assert len(by_key[b"p3"].value()) <= 512 * 1024
    assert "differs from user_id" in headers(by_key[b"someone-else"])["reason"]
    assert "murmur2" in headers(by_key[liar.encode()])["reason"]


def test_an_unwritable_dlq_stops_reading_and_loses_nothing(
    start_job: StartJob, bootstrap: str, redis_server: Component, feast_registry: Path, dlq_topic: str, tmp_path: Path
) -> None:
    """Fault: the DLQ refuses a letter (larger than the producer's limit). The job must stop, not skip it."""
    topic = create_topic(bootstrap, 1)
    events, categories, world = world_events(600, seed=12)
    write_catalog(world.catalog(), tmp_path / "catalog.parquet")
    before, after = events[:300], events[300:]
    produce_raw(bootstrap, topic, list(encoded(before)))
    first = start_job(topic)
    wait_until(lambda: first.metric('freshrank_stream_events_total{outcome="admitted"}') >= 300, 180, "first events")
    wait_until(lambda: list((tmp_path / "checkpoints").glob("*/chk-*/_metadata")), 60, "a checkpoint")
    first.kill(signal.SIGKILL)
    produce_raw(bootstrap, topic, [(b"poison", HEADER.pack(0, 1) + os.urandom(1_200_000))])
    produce_raw(bootstrap, topic, list(encoded(after)))
    # A DLQ size limit above what the DLQ producer may send (1 MB): every write of the letter fails.
    second = start_job(topic, max_dlq_record_bytes="3000000")
    wait_until(lambda: second.metric("freshrank_stream_dlq_write_failures_total") >= 2, 120, "DLQ write failures")
    assert second.metric('freshrank_stream_reading_paused{reason="dlq"}') == 1
    assert second.metric('freshrank_stream_events_total{outcome="admitted"}') == 0  # nothing after it was read
    assert second.metric("freshrank_stream_task_restarts_total") == 0
    assert read_topic(bootstrap, dlq_topic, quiet_s=1) == []
    assert "reading paused until it can be written" in second.flink_log()

    second.kill(signal.SIGKILL)
    third = start_job(topic)  # the default limit: the letter is written truncated, then reading goes on
    problems = exact(bootstrap, topic, 1, redis_server, feast_registry, categories)
    assert problems == [], problems[:20]
    letters = read_topic(bootstrap, dlq_topic)
    assert [m.key() for m in letters] == [b"poison"]
    assert headers(letters[0])["truncated"] == "true"
    assert third.metric('freshrank_stream_reading_paused{reason="dlq"}') == 0


def test_a_recreated_topic_is_detected_and_read_from_its_start(
    start_job: StartJob, bootstrap: str, redis_server: Component, feast_registry: Path, tmp_path: Path
) -> None:
    """Fault: the topic is deleted and recreated under the same name while the job is down (offsets start over)."""
    topic = create_topic(bootstrap, PARTITIONS)
    events, categories, world = world_events(1200, seed=13)
    write_catalog(world.catalog(), tmp_path / "catalog.parquet")
    old, new = events[:900], events[900:]  # fewer records after: the saved offsets lie past the new log's end
    produce_raw(bootstrap, topic, list(encoded(old)))
    first = start_job(topic)
    by_user, by_item = expected_features(old, categories, LATENESS_MS)
    problems = wait_exact(lambda: mismatches(redis_server.address, feast_registry, by_user, by_item, categories), 240)
    assert problems == [], problems[:20]
    wait_until(lambda: list((tmp_path / "checkpoints").glob("*/chk-*/_metadata")), 60, "a checkpoint")
    first.kill(signal.SIGKILL)

    delete_topic(bootstrap, topic)
    create_topic(bootstrap, PARTITIONS, name=topic)
    produce_raw(bootstrap, topic, list(encoded(new)))

    second = start_job(topic)
    by_user, by_item = expected_features(old + new, categories, LATENESS_MS)
    problems = wait_exact(lambda: mismatches(redis_server.address, feast_registry, by_user, by_item, categories), 240)
    assert problems == [], problems[:20]
    assert second.metric('freshrank_stream_offset_resets_total{cause="topic_recreated",partition="0"}') >= 1


def test_a_changed_layout_stops_reading_instead_of_splitting_users(
    start_job: StartJob, bootstrap: str, redis_server: Component, feast_registry: Path, tmp_path: Path
) -> None:
    """Fault: ITEM_BUCKETS changed across a restore, then the topic comes back with more partitions.

    The state is built with 16 buckets, the default of earlier releases: a job that sets no count takes the
    state's and reads on exactly; one that sets another count stops reading.
    """
    topic = create_topic(bootstrap, PARTITIONS)
    events, categories, world = world_events(900, seed=14)
    write_catalog(world.catalog(), tmp_path / "catalog.parquet")
    produce_raw(bootstrap, topic, list(encoded(events[:300])))
    first = start_job(topic, item_buckets="16")
    wait_until(lambda: first.metric('freshrank_stream_events_total{outcome="admitted"}') >= 300, 180, "events")
    wait_until(lambda: list((tmp_path / "checkpoints").glob("*/chk-*/_metadata")), 60, "a checkpoint")
    first.kill(signal.SIGKILL)

    produce_raw(bootstrap, topic, list(encoded(events[300:600])))
    unset = start_job(topic)  # no count set: the state's 16, not the default 4
    by_user, by_item = expected_features(events[:600], categories, LATENESS_MS)
    problems = wait_exact(lambda: mismatches(redis_server.address, feast_registry, by_user, by_item, categories), 240)
    assert problems == [], problems[:20]
    assert unset.metric("freshrank_stream_layout_mismatch") == 0
    unset.kill(signal.SIGKILL)

    produce_raw(bootstrap, topic, list(encoded(events[600:])))
    other_buckets = start_job(topic, item_buckets="7")
    wait_until(lambda: other_buckets.metric("freshrank_stream_layout_mismatch") == 1, 60, "layout mismatch")
    assert other_buckets.metric('freshrank_stream_events_total{outcome="admitted"}') == 0
    assert "FRESHRANK_STREAM_ITEM_BUCKETS=16" in other_buckets.flink_log()
    other_buckets.kill(signal.SIGKILL)

    delete_topic(bootstrap, topic)
    create_topic(bootstrap, PARTITIONS * 2, name=topic)
    produce_raw(bootstrap, topic, list(encoded(events[600:])))
    more_partitions = start_job(topic)
    wait_until(lambda: more_partitions.metric("freshrank_stream_layout_mismatch") == 1, 60, "layout mismatch")
    assert more_partitions.metric('freshrank_stream_events_total{outcome="admitted"}') == 0
    assert "8 partitions but the job's state was built with 4" in more_partitions.flink_log()


def test_redis_at_maxmemory_then_frozen_is_retried_and_loses_nothing(
    start_job: StartJob, bootstrap: str, redis_server: Component, feast_registry: Path, tmp_path: Path
) -> None:
    """Faults: Redis answers OOM (maxmemory, noeviction), then stops answering at all (SIGSTOP)."""
    topic = create_topic(bootstrap, PARTITIONS)
    events, categories, world = world_events(1500, seed=15)
    write_catalog(world.catalog(), tmp_path / "catalog.parquet")
    client = redis.Redis(*redis_host_port(redis_server.address))
    job = start_job(topic)
    assert redis_server.process is not None
    try:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", str(used))
        produce_raw(bootstrap, topic, list(encoded(events[:700])))
        wait_until(lambda: job.metric('freshrank_stream_sink_retries_total{reason="oom"}') > 0, 120, "OOM retries")
        assert job.metric("freshrank_stream_task_restarts_total") == 0
        client.config_set("maxmemory", "0")

        os.kill(redis_server.process.pid, signal.SIGSTOP)
        produce_raw(bootstrap, topic, list(encoded(events[700:])))
        wait_until(lambda: job.metric('freshrank_stream_sink_retries_total{reason="unavailable"}') > 0, 120, "timeouts")
        assert job.process is not None and job.process.poll() is None
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
        client.config_set("maxmemory", "0")
    by_user, by_item = expected_features(events, categories, LATENESS_MS)
    problems = wait_exact(lambda: mismatches(redis_server.address, feast_registry, by_user, by_item, categories), 240)
    assert problems == [], problems[:20]
    assert job.metric("freshrank_stream_task_restarts_total") == 0
    keys = [
        _redis_key("freshrank", EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user)]))
        for user in by_user
    ]
    ttls = [client.ttl(key) for key in keys]
    assert ttls and all(0 < ttl <= 86_400 for ttl in ttls), "every feature hash carries the views' TTL"


def test_a_half_written_catalog_keeps_the_old_one(
    start_job: StartJob, bootstrap: str, redis_server: Component, feast_registry: Path, tmp_path: Path
) -> None:
    """Fault: the catalog parquet is overwritten in place by a writer that does not rename (half a file)."""
    topic = create_topic(bootstrap, PARTITIONS)
    events, categories, world = world_events(800, seed=16)
    catalog = tmp_path / "catalog.parquet"
    write_catalog(world.catalog(), catalog)
    job = start_job(topic)
    produce_raw(bootstrap, topic, list(encoded(events[:300])))
    wait_until(lambda: job.metric('freshrank_stream_events_total{outcome="admitted"}') >= 300, 180, "events")
    whole = catalog.read_bytes()
    catalog.write_bytes(whole[: len(whole) // 2])
    produce_raw(bootstrap, topic, list(encoded(events[300:])))
    wait_until(lambda: job.metric("freshrank_stream_catalog_reload_failures_total") >= 1, 60, "a failed reload")
    by_user, by_item = expected_features(events, categories, LATENESS_MS)
    problems = wait_exact(lambda: mismatches(redis_server.address, feast_registry, by_user, by_item, categories), 240)
    assert problems == [], problems[:20]
    assert job.metric("freshrank_stream_task_restarts_total") == 0
