"""Helpers for the stream-job tests: run `freshrank stream` as a user would, and compute what it must write."""

from __future__ import annotations

import math
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from feature_repo.definitions import AS_OF_FIELD, ITEM_VIEW, JOIN_KEYS, USER_VIEW
from feature_repo.store import open_store
from features.admission import admitted_events
from features.codec import EventCodec
from features.definitions import ITEM_FEATURES, USER_FEATURES
from features.events import InteractionEvent
from features.item import replay_item
from features.partitioning import partition_for
from features.user import replay_user
from sdk.clock import wall_clock_ms
from simulator.config import WorldConfig
from simulator.world import SyntheticWorld
from stack.health import metrics_healthy, scrape_all
from stack.ports import free_port, free_ports
from stack.processes import Component, signal_process, start_process, wait_healthy
from stack.settings import StackError
from streaming.metrics import metrics_addresses


@dataclass
class StreamJob:
    """`python -m cli stream` in its own process group, so a SIGKILL takes the Flink JVM down too."""

    env: dict[str, str]
    metrics_port: int
    dashboard: str
    work_dir: Path
    component: Component | None = None

    @property
    def log_path(self) -> Path:
        return self.work_dir / "stream.log"  # start_process writes <log dir>/<component name>.log

    @staticmethod
    def configured(
        work_dir: Path,
        *,
        bootstrap: str,
        topic: str,
        dlq_topic: str,
        redis_address: str,
        feast_registry: Path,
        catalog: Path,
        **settings: str,
    ) -> StreamJob:
        """A job on these topics and stores; checkpoints and log under `work_dir`; metrics and dashboard on free ports.

        `settings` adds more variables: `lateness_ms="500"` sets FRESHRANK_STREAM_LATENESS_MS.
        """
        # On a local cluster TaskManager i serves /metrics on port + i: keep the whole block free.
        port, ui_port = free_ports(max(1, int(settings.get("task_managers", "0")))), free_port()
        env = {
            "FRESHRANK_STREAM_BOOTSTRAP_SERVERS": bootstrap,
            "FRESHRANK_STREAM_TOPIC": topic,
            "FRESHRANK_STREAM_DLQ_TOPIC": dlq_topic,
            "FRESHRANK_STREAM_REDIS_ADDRESS": redis_address,
            "FRESHRANK_STREAM_FEAST_REGISTRY": str(feast_registry),
            "FRESHRANK_STREAM_CHECKPOINT_DIR": str(work_dir / "checkpoints"),
            "FRESHRANK_STREAM_CATALOG_PATH": str(catalog),
            "FRESHRANK_STREAM_METRICS_PORT": str(port),
            # Never Flink's 8081: a `freshrank up` stack on this machine may hold it.
            "FRESHRANK_STREAM_FLINK_UI_PORT": str(ui_port),
            "FRESHRANK_STREAM_FLINK_LOG_DIR": str(work_dir / "flink-logs"),
        }
        env.update({f"FRESHRANK_STREAM_{name.upper()}": value for name, value in settings.items()})
        return StreamJob(env, port, f"http://127.0.0.1:{ui_port}", work_dir)

    @property
    def metrics_addresses(self) -> list[str]:
        """One /metrics per TaskManager on a local cluster (FRESHRANK_STREAM_TASK_MANAGERS), else the one."""
        task_managers = int(self.env.get("FRESHRANK_STREAM_TASK_MANAGERS", "0"))
        return metrics_addresses("127.0.0.1", self.metrics_port, task_managers)

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.component.process if self.component else None

    def start(self, timeout_s: float = 240.0) -> None:
        """Start the job with `env` as it is now; returns once every process of it serves /metrics."""
        self.component = Component(
            name="stream",
            address=f"127.0.0.1:{self.metrics_port}",
            command=[sys.executable, "-m", "cli", "stream"],
            healthy=lambda: metrics_healthy(self.metrics_addresses),
            env=dict(self.env),
        )
        start_process(self.component, self.log_path.parent)
        try:
            wait_healthy(self.component, self.log_path.parent, timeout_s)
        except StackError:
            # Killed here: a job left running would outlive the test and fail a later one.
            self.kill()
            raise

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """`sig` to the job's whole process group (SIGKILL: a crash); returns once its leader has exited."""
        if self.component is not None:
            signal_process(self.component, sig)

    def flink_log(self) -> str:
        """Flink's log of this job's work dir: the operators' log lines are here."""
        logs = sorted((Path(self.env["FRESHRANK_STREAM_FLINK_LOG_DIR"])).glob("*.log"))
        return "".join(path.read_text(errors="replace") for path in logs)

    def metric(self, name: str, address: str | None = None) -> float:
        """Sum of the series starting with `name`, over every process of the job (or at `address` only)."""
        series = scrape_all([address] if address else self.metrics_addresses, timeout_s=3)
        if series is None:
            return math.nan
        return sum(value for key, value in series.items() if key.startswith(name))


def produce_raw(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], timestamps: list[int] | None = None
) -> None:
    """Produce as the SDK partitions (murmur2 on the key); `timestamps` sets each record's CreateTime."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            "message.max.bytes": 2_000_000,
        }
    )
    failures: list[Any] = []
    for index, (key, value) in enumerate(records):
        stamp = {"timestamp": timestamps[index]} if timestamps is not None else {}
        producer.produce(topic, key=key, value=value, on_delivery=lambda e, _m: e and failures.append(e), **stamp)
        producer.poll(0)
    assert producer.flush(60) == 0 and not failures, failures[:3]


def read_topic(bootstrap: str, topic: str, partitions: int = 1, quiet_s: float = 3.0) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "test-dlq-reader",
            "enable.auto.commit": False,
            "fetch.message.max.bytes": 4 * 1024 * 1024,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages, last = [], time.monotonic()
    try:
        while time.monotonic() - last < quiet_s:
            batch = [m for m in consumer.consume(500, 0.5) if m.error() is None]
            if batch:
                messages.extend(batch)
                last = time.monotonic()
    finally:
        consumer.close()
    return messages


def expected_features(
    events_in_log_order: list[InteractionEvent],
    categories: dict[str, str],
    lateness_ms: int,
    ingest_times: list[int | None] | None = None,
) -> tuple[dict[str, list[InteractionEvent]], dict[str, list[InteractionEvent]]]:
    """Admitted events grouped by user and by item: the input of the pure replay.

    `ingest_times` (the records' timestamps, see `logged_events`) apply the clock-skew
    and staleness rules as the job applies them.
    """
    by_user: dict[str, list[InteractionEvent]] = defaultdict(list)
    by_item: dict[str, list[InteractionEvent]] = defaultdict(list)
    for event in admitted_events(events_in_log_order, lateness_ms, ingest_times):
        by_user[event.user_id].append(event)
        by_item[event.item_id].append(event)
    return by_user, by_item


def logged_events(bootstrap: str, topic: str, partitions: int) -> tuple[list[InteractionEvent], list[int | None]]:
    """The admissible events of `topic` in per-partition log order, with their record timestamps."""
    codec = EventCodec()
    events: list[InteractionEvent] = []
    times: list[int | None] = []
    messages = read_topic(bootstrap, topic, partitions)
    for message in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        event = codec.decode(message.value())
        key = message.key()
        # The job refuses a record not keyed by its user or not in its key's murmur2 partition.
        if (
            isinstance(event, InteractionEvent)
            and key == event.user_id.encode()
            and message.partition() == partition_for(key, partitions)
        ):
            events.append(event)
            times.append(message.timestamp()[1])
    return events, times


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    """Poll `condition()` until true; fail with `what` if it never is."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def wait_for_checkpointed_progress(job: StreamJob, checkpoints: Path, admitted: int, timeout_s: float) -> None:
    """Until `job` has completed a checkpoint under `checkpoints` and admitted `admitted` events: a kill then
    lands mid-stream with state to restore."""
    wait_until(
        lambda: (
            bool(list(checkpoints.glob("*/chk-*/_metadata")))
            and job.metric('freshrank_stream_events_total{outcome="admitted"}') >= admitted
        ),
        timeout_s,
        "a checkpoint and progress before the kill",
    )


def online_rows(redis_address: str, registry: Path, view: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    store = open_store(redis_address, registry)
    specs = USER_FEATURES if view == USER_VIEW else ITEM_FEATURES
    join_key = JOIN_KEYS[view]
    refs = [f"{view}:{spec.name}" for spec in specs] + [f"{view}:{AS_OF_FIELD}"]
    rows: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 200):
        chunk = ids[start : start + 200]
        result = store.get_online_features(features=refs, entity_rows=[{join_key: i} for i in chunk]).to_dict()
        for index, entity in enumerate(chunk):
            rows[entity] = {name: result[name][index] for name in result if name != join_key}
    return rows


def mismatches(
    redis_address: str,
    registry: Path,
    by_user: dict[str, list[InteractionEvent]],
    by_item: dict[str, list[InteractionEvent]],
    categories: dict[str, str],
) -> list[str]:
    """Every difference between what Redis holds and the pure replay as of each row's own as_of_ms."""
    problems: list[str] = []
    checks = (
        (USER_VIEW, by_user, lambda evs, t: replay_user(evs, categories, t)),
        (ITEM_VIEW, by_item, replay_item),
    )
    for view, groups, replay in checks:
        rows = online_rows(redis_address, registry, view, sorted(groups))
        for entity, events in groups.items():
            row = rows[entity]
            as_of = row.get(AS_OF_FIELD)
            if as_of is None:
                problems.append(f"{view} {entity}: no row")
                continue
            # Features answer as of the newest event when it is later than as_of (an event from a
            # clock running ahead), so the replay does too; a row that misses an event differs.
            newest = max(e.event_time_ms for e in events)
            want = replay(events, max(as_of, newest))
            for name, value in want.items():
                if not same(row[name], value):
                    problems.append(f"{view} {entity} {name}: online {row[name]!r} != replay {value!r}")
    return problems


def same(online: Any, expected: Any) -> bool:
    if isinstance(expected, float):
        return online is not None and math.isclose(online, expected, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(expected, list) and expected and isinstance(expected[0], float):
        return len(online or []) == len(expected) and all(same(a, b) for a, b in zip(online, expected, strict=True))
    return bool(online == expected or (online is None and expected == []))


def wait_exact(check: Any, timeout_s: float) -> list[str]:
    """Poll `check()` (a list of problems) until it is empty or time runs out; return the last problems."""
    deadline = time.monotonic() + timeout_s
    problems = check()
    while problems and time.monotonic() < deadline:
        time.sleep(2)
        problems = check()
    return list(problems)


def encoded(events: list[InteractionEvent]) -> Iterator[tuple[bytes, bytes]]:
    codec = EventCodec()
    for event in events:
        yield event.user_id.encode(), codec.encode(event)


def world_events(count: int, seed: int) -> tuple[list[InteractionEvent], dict[str, str], SyntheticWorld]:
    world = SyntheticWorld(
        WorldConfig(users=150, items=120, seed=seed, rate=count / 20, seconds=20, start_ms=wall_clock_ms() - 60_000)
    )
    events = list(world.events())
    return events, {item.item_id: item.category for item in world.catalog()}, world


def with_resends_and_disorder(events: list[InteractionEvent], seed: int) -> list[InteractionEvent]:
    """Resend 5% of events later in the log, and swap some neighbours so event time goes backwards."""
    rng = random.Random(seed)
    log = list(events)
    for index in range(0, len(log) - 1, 7):
        log[index], log[index + 1] = log[index + 1], log[index]
    for event in rng.sample(events, len(events) // 20):
        log.insert(rng.randrange(log.index(event) + 1, len(log) + 1), event)
    return log
