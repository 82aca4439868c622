"""The stream job on a real broker, Redis and PyFlink mini-cluster: exact features, crash, Redis outage.

Every test publishes synthetic events (with resends and out-of-order events
within the lateness bound), runs `freshrank stream` as a user would, and
compares what Feast serves for every user and item with the pure replay of
the admitted events, as of the `as_of_ms` each row carries.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from features.codec import EventCodec
from features.events import EventType, InteractionEvent
from sdk.clock import wall_clock_ms
from simulator.catalog import write_catalog
from stack.processes import Component, start_process, stop_process, wait_healthy
from tests.integration.streamjob import (
    StreamJob,
    encoded,
    expected_features,
    mismatches,
    produce_raw,
    read_topic,
    wait_exact,
    wait_for_checkpointed_progress,
    with_resends_and_disorder,
    world_events,
)

LATENESS_MS = 300_000


@pytest.fixture
def job_factory(
    tmp_path: Path, bootstrap: str, redis_server: Component, feast_registry: Path, fresh_topic: str, dlq_topic: str
) -> Iterator[object]:
    jobs: list[StreamJob] = []
    catalog = tmp_path / "catalog.parquet"

    def make() -> StreamJob:
        job = StreamJob.configured(
            tmp_path,
            bootstrap=bootstrap,
            topic=fresh_topic,
            dlq_topic=dlq_topic,
            redis_address=redis_server.address,
            feast_registry=feast_registry,
            catalog=catalog,
            lateness_ms=str(LATENESS_MS),
            checkpoint_interval_ms="1000",
        )
        jobs.append(job)
        return job

    make.catalog = catalog  # type: ignore[attr-defined]
    yield make
    for job in jobs:
        job.kill()


def test_features_equal_the_replay_and_bad_records_land_in_the_dlq(
    job_factory, bootstrap: str, redis_server: Component, feast_registry: Path, fresh_topic: str, dlq_topic: str
) -> None:
    events, categories, world = world_events(2500, seed=1)
    write_catalog(world.catalog(), job_factory.catalog)
    log = with_resends_and_disorder(events, seed=1)
    codec = EventCodec()
    good = codec.encode(events[0])
    malformed = [
        (b"u-bad-1", b"not avro at all"),
        (b"u-bad-2", b"\x00\x00\x00\x00\x63" + good[5:]),  # unknown schema id
        (b"u-bad-3", good[:-3]),  # truncated body
        (b"u-bad-4", codec.encode(InteractionEvent("x1", "u", "", EventType.CLICK, wall_clock_ms()))),  # no item id
        (b"u-bad-5", codec.encode(InteractionEvent("x2", "u", "i", EventType.CLICK, wall_clock_ms() + 86_400_000))),
    ]
    records = list(encoded(log))
    for position, record in zip((10, 500, 1000, 1500, 2000), malformed, strict=True):
        records.insert(position, record)
    produce_raw(bootstrap, fresh_topic, records)

    job = job_factory()
    job.start()
    by_user, by_item = expected_features(log, categories, LATENESS_MS)
    problems = wait_exact(
        lambda: mismatches(redis_server.address, feast_registry, by_user, by_item, categories), timeout_s=240
    )
    assert problems == [], problems[:20]
    assert job.metric('freshrank_stream_events_total{outcome="duplicate"}') == len(log) - len(events)

    dlq = read_topic(bootstrap, dlq_topic)
    assert sorted(m.value() for m in dlq) == sorted(value for _, value in malformed)
    reasons = {m.value(): dict(m.headers())["reason"].decode() for m in dlq}
    assert "magic byte" in reasons[b"not avro at all"] or "shorter" in reasons[b"not avro at all"]
    assert "schema id 99" in reasons[malformed[1][1]]
    assert "item_id" in reasons[malformed[3][1]]
    assert "future" in reasons[malformed[4][1]]


def test_sigkill_mid_stream_then_resume_loses_nothing_and_counts_nothing_twice(
    job_factory, bootstrap: str, redis_server: Component, feast_registry: Path, fresh_topic: str, tmp_path: Path
) -> None:
    events, categories, world = world_events(4000, seed=2)
    write_catalog(world.catalog(), job_factory.catalog)
    log = with_resends_and_disorder(events, seed=2)
    produce_raw(bootstrap, fresh_topic, list(encoded(log[: len(log) // 2])))

    first = job_factory()
    first.start()
    wait_for_checkpointed_progress(first, tmp_path / "checkpoints", len(log) // 8, timeout_s=180)
    produce_raw(bootstrap, fresh_topic, list(encoded(log[len(log) // 2 :])))
    first.kill(signal.SIGKILL)  # the whole process group: client, Python workers and the JVM

    second = job_factory()
    second.start()
    by_user, by_item = expected_features(log, categories, LATENESS_MS)
    problems = wait_exact(
        lambda: mismatches(redis_server.address, feast_registry, by_user, by_item, categories), timeout_s=240
    )
    assert problems == [], problems[:20]
    assert "resuming from" in (tmp_path / "stream.log").read_text()


def test_redis_down_for_ten_seconds_mid_stream_loses_nothing(
    job_factory, bootstrap: str, redis_server: Component, feast_registry: Path, fresh_topic: str, tmp_path: Path
) -> None:
    events, categories, world = world_events(3000, seed=3)
    write_catalog(world.catalog(), job_factory.catalog)
    log = with_resends_and_disorder(events, seed=3)
    job = job_factory()
    job.start()
    produce_raw(bootstrap, fresh_topic, list(encoded(log[: len(log) // 3])))
    time.sleep(3)

    stop_process(redis_server)  # SIGTERM: Redis shuts down keeping its append-only file
    produce_raw(bootstrap, fresh_topic, list(encoded(log[len(log) // 3 :])))
    time.sleep(10)
    assert job.process is not None and job.process.poll() is None, "the job must wait for Redis, not die"
    start_process(redis_server, tmp_path / "logs")
    wait_healthy(redis_server, tmp_path / "logs")

    by_user, by_item = expected_features(log, categories, LATENESS_MS)
    problems = wait_exact(
        lambda: mismatches(redis_server.address, feast_registry, by_user, by_item, categories), timeout_s=240
    )
    assert problems == [], problems[:20]
    assert job.metric("freshrank_stream_sink_retries_total") > 0


def test_rows_pending_at_the_checkpoint_are_written_after_a_restore_with_no_new_events(
    job_factory, bootstrap: str, redis_server: Component, feast_registry: Path, fresh_topic: str, tmp_path: Path
) -> None:
    events, categories, world = world_events(1500, seed=4)
    write_catalog(world.catalog(), job_factory.catalog)
    produce_raw(bootstrap, fresh_topic, list(encoded(events)))
    first = job_factory()
    first.start()
    deadline = time.monotonic() + 180
    while not list((tmp_path / "checkpoints").glob("*/chk-*/_metadata")):
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.1)
    first.kill(signal.SIGKILL)  # right after the first checkpoint: flushes and sink batches are pending in it

    second = job_factory()
    second.start()
    by_user, by_item = expected_features(events, categories, LATENESS_MS)
    problems = wait_exact(
        lambda: mismatches(redis_server.address, feast_registry, by_user, by_item, categories), timeout_s=180
    )
    assert problems == [], problems[:20]


def test_records_of_a_confluent_serializer_are_admitted_and_an_incompatible_schema_goes_to_the_dlq(
    job_factory, bootstrap: str, redis_server: Component, feast_registry: Path, fresh_topic: str, dlq_topic: str
) -> None:
    import copy
    import json

    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from features.codec import SchemaRegistry, to_record
    from tests.schema_registry_server import FakeSchemaRegistry

    events, categories, world = world_events(600, seed=3)
    write_catalog(world.catalog(), job_factory.catalog)
    ours = SchemaRegistry().latest().definition
    legacy = copy.deepcopy(ours)  # a service that added an event type we cannot read
    legacy["fields"][3]["type"]["symbols"].append("purchase")
    with FakeSchemaRegistry() as registry:
        client = SchemaRegistryClient({"url": registry.url})
        # What a Java/Go/Node service with Confluent's serializer writes: the registry's ids.
        serialize = AvroSerializer(client, json.dumps(ours))
        legacy_serialize = AvroSerializer(client, json.dumps(legacy))
        context = SerializationContext(fresh_topic, MessageField.VALUE)
        records = [(e.user_id.encode(), serialize(to_record(e), context)) for e in events]
        purchase = {**to_record(events[0]), "event_id": "legacy-1", "event_type": "purchase"}
        incompatible = legacy_serialize(purchase, SerializationContext("legacy", MessageField.VALUE))
        assert incompatible is not None and all(value is not None for _, value in records)
        records.insert(300, (b"u-legacy", incompatible))
        produce_raw(bootstrap, fresh_topic, records)  # type: ignore[arg-type]

        job = job_factory()
        job.env["FRESHRANK_SCHEMA_REGISTRY_URL"] = registry.url
        job.start()
        deadline = time.monotonic() + 120
        dlq = read_topic(bootstrap, dlq_topic)
        while not dlq and time.monotonic() < deadline:
            dlq = read_topic(bootstrap, dlq_topic)
        reasons = [dict(m.headers())["reason"].decode() for m in dlq]
        assert [m.value() for m in dlq] == [incompatible], reasons[:3]
        assert "writer schema id 100002 is incompatible" in reasons[0]
        assert "missing_enum_symbols" in reasons[0] and "purchase" in reasons[0]

        by_user, by_item = expected_features(events, categories, LATENESS_MS)
        problems = wait_exact(
            lambda: mismatches(redis_server.address, feast_registry, by_user, by_item, categories), timeout_s=240
        )
        assert problems == [], problems[:20]
